"""Running a scheduler's commands (`sbatch`, `sacct`, `scancel`, ...): here, and later through SSH
on a login node. Callers depend on `CommandRunner` only; every call is counted, so benchmarks and
tests can hold the scheduler client to its budget of calls."""

from __future__ import annotations

import asyncio
import os
import pwd
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from ..exec.launcher import Identity


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """One line for an error message: the command and what it said."""
        said = (self.stderr.strip() or self.stdout.strip() or f"exit status {self.returncode}").splitlines()
        return f"`{' '.join(self.argv[:2])}` failed: {said[-1] if said else self.returncode}"


class CommandRunner(Protocol):
    calls: Counter

    async def run(self, argv: list[str], stdin: str | None = None, timeout: float = 120.0,
                  identity: Identity | None = None) -> CommandResult: ...


class CommandMissing(Exception):
    """The scheduler's command is not installed where the runner runs it."""


class RunnerUnreachable(Exception):
    """Where the commands run cannot be reached just now (a dropped link): ask again later."""


@dataclass
class LocalCommands:
    """Commands on this host, with `env` added to ours (SLURM_CONF and the like)."""

    env: dict[str, str] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)

    async def run(self, argv: list[str], stdin: str | None = None, timeout: float = 120.0,
                  identity: Identity | None = None) -> CommandResult:
        """`identity`: run the command as that user (root only), so that what it submits is theirs."""
        self.calls[os.path.basename(argv[0])] += 1
        env = {**os.environ, **self.env}
        switch = {}
        if identity is not None and identity.uid != os.geteuid():
            switch = {"user": identity.uid, "group": identity.gid, "extra_groups": list(identity.groups)}
            try:
                entry = pwd.getpwuid(identity.uid)
                env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
            except KeyError:
                env.update(HOME="/", USER=str(identity.uid), LOGNAME=str(identity.uid))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd="/", **switch)
        except FileNotFoundError:
            raise CommandMissing(f"{argv[0]} is not installed on this host (is it on PATH?)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
        except asyncio.CancelledError:
            # The run is stopping (Ctrl-C): a scheduler command under way gets a moment to finish,
            # and is reaped either way, so no child outlives the event loop that started it.
            await asyncio.shield(_reap(proc, grace=5.0))
            raise
        return CommandResult(tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def _reap(proc: asyncio.subprocess.Process, grace: float) -> None:
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()
