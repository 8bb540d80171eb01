"""Jobs of an SSH target whose host submits to its own SLURM (`default_scheduler = "slurm"`).

The SLURM launcher does the work, with the SSH connection as its command runner: `sbatch`,
`squeue`, `sacct` and `scancel` run on the remote login node. As for the SSH launcher, the local
base path is a mirror of the remote one (the same `Mirror`): the engine prepares each job here,
the batch script and sbatch's options carry the remote paths, and each submission goes with the
files its jobs read (`repx/*.json`) and a fresh `out/` for them, staged by `remote_slurm.sh` in
the same remote command as the sbatch. Once per poll, after the status query, one more remote
command brings back what the jobs that ended left there (exit files, logs, a scatter's
work_items.json, SLURM's batch output), which the SLURM launcher then reads as it would locally.
The markers the engine writes here reach the remote as with the SSH launcher's own jobs."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...exec.launcher import ExitStatus, LaunchRequest, exit_file
from ...exec.layout import Preparation
from ...exec.runtimes import Invocation
from ...user_config import TargetConfig
from ..cluster import Phase, options_from
from ..commands import CommandResult
from ..slurm.launcher import SlurmLauncher
from .connection import SshConnection, SshError, SshToolMissing, is_connection_problem
from .launcher import SSH_FAILURE, Mirror, RemoteError, SshLauncher

log = logging.getLogger("repx.ssh")
HELPER = Path(__file__).with_name("remote_slurm.sh")
# What a job sees of the remote account's environment (a local job gets ours); the rest of the
# login session's variables (SSH_CONNECTION, ...) say nothing the job should depend on.
KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR")


def remote_text(mirror: Mirror, text: str) -> str:
    """A batch script or an option with every path under the local base made remote."""
    root = str(mirror.local)
    return mirror.remote if text == root else text.replace(root + "/", mirror.remote + "/")


@dataclass
class MirroredCommands:
    """The SSH connection as the SLURM launcher's CommandRunner: local base paths in the argv and
    the batch script become remote ones, and an sbatch goes with the files staged for it."""

    connection: SshConnection
    mirror: Mirror
    helper: str  # the deployed remote_slurm.sh
    retry_interval: float = 2.0  # between tries of a submission while the host does not answer
    _staged: list[str] = field(default_factory=list)
    _submitting: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def calls(self) -> Counter:
        return self.connection.calls

    def stage(self, lines: str) -> None:
        """Staging lines (remote paths already) for the next sbatch: every process queued before
        a submission is in it, since the launcher submits after its submit window."""
        self._staged.append(lines)

    async def run(self, argv: list[str], stdin: str | None = None, timeout: float = 120.0,
                  identity=None) -> CommandResult:
        """`identity` has no meaning here: jobs are the SSH account's on the remote cluster."""
        argv = [remote_text(self.mirror, a) for a in argv]
        if os.path.basename(argv[0]) != "sbatch":
            return await self.connection.run(argv, stdin=stdin, timeout=timeout)  # a failed query is asked again next poll
        self.calls["sbatch"] += 1
        # One submission at a time: an sbatch carries every file staged so far, also those of
        # processes another array submits, which must not reach SLURM before its files are there.
        async with self._submitting:
            staged, self._staged = "".join(self._staged), []
            stdin = staged + ".\n" + remote_text(self.mirror, stdin or "")
            answers = f"{self.mirror.remote}/cache/submissions"
            argv = ["sh", self.helper, "submit", answers, secrets.token_hex(8), *argv]
            return await self._submit(argv, stdin, timeout)

    async def _submit(self, argv: list[str], stdin: str, timeout: float) -> CommandResult:
        while True:  # while the host does not answer, the jobs wait to be submitted
            try:
                result = await self.connection.run(argv, stdin=stdin, timeout=timeout)
            except SshError as exc:
                if not is_connection_problem(exc):
                    return CommandResult(tuple(argv), SSH_FAILURE, "", str(exc))
                log.warning("submitting to the remote SLURM: %s; trying again", exc)
            else:
                # Timed out, or the channel closed without a status: the same token asks for the answer.
                if result.returncode not in (SSH_FAILURE, 124):
                    return result
                log.warning("submitting to the remote SLURM: %s; asking again", result.failure())
            await asyncio.sleep(self.retry_interval)


@dataclass
class RemoteSlurmLauncher(SlurmLauncher):
    mirror: Mirror | None = None
    markers: SshLauncher | None = None  # sends the engine's markers to the remote, as for SSH jobs
    remote_env: dict[str, str] = field(default_factory=dict)

    # ---- the launcher interface ------------------------------------------------------------

    async def run(self, invocation: Invocation, repx: Path, guard, request: LaunchRequest, prepare: Preparation,
                  *, success: dict | None = None, on_spawn=None) -> ExitStatus:
        prepare()  # before staging: the job's JSON files in the mirror go to the remote with it
        self.commands.stage(self._staging(invocation.cwd, repx, guard.path, request))
        remote = Invocation(invocation.argv, self._job_env(invocation.env), invocation.cwd)
        return await self._submit_and_follow(remote, repx, guard, request, on_spawn)

    def mirror_marker(self, repx: Path, marker: str, completion: str | None) -> None:
        self.markers.mirror_marker(repx, marker, completion)

    async def flush(self) -> None:
        await self.markers.flush()

    def _account(self) -> str:
        """The ssh account: its association limits, not the local user's, bound what may be queued."""
        return self.remote_env.get("USER") or self.remote_env.get("LOGNAME") or super()._account()

    # ---- staging ----------------------------------------------------------------------------

    def _staging(self, cwd: Path, repx: Path, guard: Path, request: LaunchRequest) -> str:
        m = self.mirror
        lines = [f"R\t{m.path(cwd)}\t{m.path(repx)}\t{m.path(exit_file(guard))}\n"]
        if self.log_dir is not None:
            batch = self.log_dir if request.user is None else self.log_dir / str(request.user)
            lines.append(f"D\t{m.path(batch)}\n")
        lines += [f"F\t{m.path(path)}\n{base64.b64encode(data).decode()}\n"
                  for path, data in self.markers.input_files(repx)]
        return "".join(lines)

    def _job_env(self, local: dict[str, str]) -> dict[str, str]:
        """The remote account's environment, with the Lab's tool directories (under the base
        path, made remote in the script) first on PATH as a local job has them."""
        tools = [d for d in local.get("PATH", "").split(":") if self.mirror.path(d) != d]
        env = dict(self.remote_env)
        env["PATH"] = ":".join([*tools, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
        return env

    # ---- status -----------------------------------------------------------------------------

    async def _query(self, slurm_ids: list[str]) -> dict:
        """SLURM's word, and for the jobs it says ended, their files from the remote (one command
        for all of them) before the launcher reads them: a failure is asked again next poll."""
        states = await super()._query(slurm_ids)
        ended = [s for s in slurm_ids if s in self._guards and (state := states.get(s)) is not None
                 and state.phase is not Phase.WAITING]
        if ended:
            await self._fetch(ended)
        return states

    async def _fetch(self, slurm_ids: list[str]) -> None:
        m = self.mirror
        batch = m.path(self.log_dir) if self.log_dir is not None else "/nonexistent"
        listing = ""
        for slurm_id in slurm_ids:
            guard = self._guards[slurm_id]
            repx = self.markers.repx_of(guard)
            listing += "\t".join([m.path(exit_file(guard)), m.path(repx), m.path(repx.parent / "out"),
                                  batch, slurm_id]) + "\n"
        result = await self.commands.connection.run(["sh", self.commands.helper, "fetch"], stdin=listing)
        if not result.ok or not result.stdout.rstrip().endswith("E"):
            raise RemoteError(f"reading the ended jobs' files on the remote host: {result.failure()}")
        await asyncio.to_thread(self._store, result.stdout)  # logs of up to 16 MiB each: off the loop

    def _store(self, answer: str) -> None:
        lines = iter(answer.splitlines())
        for line in lines:
            if line.startswith("F "):
                path = self.mirror.local_path(line[2:])
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.repx-tmp")
                tmp.write_bytes(base64.b64decode(next(lines, "")))
                tmp.replace(path)


async def remote_slurm_launcher(connection: SshConnection, config: TargetConfig, mirror: Mirror, helper: str,
                                markers: SshLauncher, tag: str, log_dir: Path) -> RemoteSlurmLauncher:
    """The launcher for a target's jobs on its host's SLURM; `helper` is the deployed remote_slurm.sh.
    One remote command checks that SLURM's commands are there and reads the account's environment."""
    found = await connection.run(["sh", "-c", "for c in sbatch squeue scancel; do command -v $c >/dev/null || "
                                  "{ echo $c; exit 12; }; done; env"])
    if found.returncode == 12:
        raise SshToolMissing(f"target {connection.target_name!r}: {found.stdout.strip()} is not on the PATH of an ssh"
                             f" session on {connection.host}; default_scheduler = \"slurm\" submits with SLURM's"
                             " commands there (install them, or set default_scheduler = \"local\")")
    if not found.ok:
        raise SshError(f"target {connection.target_name!r}: reading the remote account's environment: {found.failure()}")
    variables = dict(line.split("=", 1) for line in found.stdout.splitlines() if "=" in line)
    remote_env = {k: v for k, v in variables.items() if k in KEPT_ENV}
    return RemoteSlurmLauncher(MirroredCommands(connection, mirror, helper), options_from(config.slurm), tag, log_dir,
                               mirror=mirror, markers=markers, remote_env=remote_env)
