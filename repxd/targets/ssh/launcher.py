"""SshLauncher: the launcher interface of `exec.launcher` (guarded/run) with processes started
detached on an SSH target's host.

The engine prepares each job on the local base path, which here is a *mirror* of the remote one:
before a process starts, its `repx/` input files (inputs.json, parameters.json, and a
scatter-gather job's step files) are sent to the same place under the remote base, with the
local base rewritten to the remote one in their paths and in the command line. The process runs
under `remote.sh`, deployed under `<remote base>/bin/`: setsid + nohup, a pid file, its exit
status written to an exit file when it ends; nothing but sh, coreutils and util-linux on the remote.

One remote command per poll cycle follows every running process; it returns the logs (and a
scatter's work_items.json) of those that ended, which are written into the mirror, where the
engine reads them as it would locally. The markers (and completion lines) the engine then writes
in the mirror go the other way, with the next poll cycle's command (or with `flush` at the end of
a run), so that the remote base is in upstream's layout too. Each process's handle (pid and start time) is recorded
beside its guard, so a restarted repx follows the process it started instead of starting it
again; before the handle is known, the record holds the start's token, which the remote process
claims its guard with before it runs anything, and which a restarted repx resolves (the handle,
or the token revoked) before it starts anything. A lost connection is waited out: processes keep running on the remote, and their jobs
stay running here until the host answers again."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import RepxError
from ...exec.job import DISK_FULL_BELOW
from ...exec.launcher import DISK_FULL, ExitStatus, Guard, LaunchRequest, exit_file, guarded
from ...exec.layout import COMPLETIONS, Preparation
from ...exec.runtimes import Invocation
from ..commands import CommandResult, CommandRunner

log = logging.getLogger("repx.ssh")
RECORD_SUFFIX = "ssh"
HELPER = Path(__file__).with_name("remote.sh")
# ssh's own failures (no route, connection reset) exit 255; anything the helper says is below that.
SSH_FAILURE = 255
TIMED_OUT = 124  # coreutils' timeout, when the job's time limit ran out


class RemoteError(RepxError):
    """The remote host refused something repx asked of it (not a connection problem)."""


def record_file(guard: Path) -> Path:
    return guard.with_name(f"{guard.name}.{RECORD_SUFFIX}")


@dataclass(frozen=True)
class Mirror:
    """The local base path and the remote one it stands for."""

    local: Path
    remote: str

    def path(self, local: Path | str) -> str:
        text = str(local)
        root = str(self.local)
        if text == root or text.startswith(root + "/"):
            return self.remote + text[len(root):]
        return text

    def json_text(self, data: bytes) -> bytes:
        """JSON with every string that is a path under the local base made remote, the layout
        kept byte for byte otherwise (a job may read the file as text)."""
        local, remote = (json.dumps(str(p))[:-1].encode() for p in (self.local, self.remote))
        return data.replace(local + b'"', remote + b'"').replace(local + b"/", remote + b"/")

    def local_path(self, remote: str) -> Path:
        if remote == self.remote or remote.startswith(self.remote + "/"):
            return Path(str(self.local) + remote[len(self.remote):])
        raise RemoteError(f"the remote sent back {remote!r}, which is not under {self.remote}")


@dataclass(frozen=True)
class Handle:
    pid: str
    started: str

    def __str__(self) -> str:
        return f"{self.pid} {self.started}"


@dataclass
class _Followed:
    handle: Handle
    guard: Path
    repx: Path
    out: Path
    future: asyncio.Future
    time_limited: bool  # started under `timeout`: its status 124 means the limit ran out


class ConnectionProblem(Exception):
    """The host did not answer (or the link dropped mid-command): try again later."""


@dataclass
class SshLauncher:
    commands: CommandRunner
    mirror: Mirror
    helper: str  # the deployed remote.sh
    poll_interval: float = 1.0
    retry_interval: float = 2.0  # between attempts to start a process while the host does not answer
    transient: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    name = "ssh"
    _followed: dict[str, _Followed] = field(default_factory=dict, init=False)
    _poll_task: asyncio.Task | None = field(default=None, init=False)
    # Markers written in the mirror and not yet on the remote: remote repx dir -> its M line.
    _marks: dict[str, str] = field(default_factory=dict, init=False)
    # Held while markers are on their way, so that a flush never sends them a second time.
    _sending: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    # ---- the launcher interface ------------------------------------------------------------

    @asynccontextmanager
    async def guarded(self, path: Path, request: LaunchRequest):
        """The guard's lock; a process an earlier repx started on the remote for this directory is
        followed to its end first, and its status becomes the guard's leftover status."""
        async with guarded(path) as guard:
            words = _read_record(path) if guard.leftover_status is None else []
            if words and words[0] == "starting":  # it may have started before that repx died
                words = await self._resolve(path, words[1])
            if len(words) == 2:
                log.info("following remote process %s started earlier for %s", words[0], request.job_id)
                guard.leftover_status = await self._follow(Handle(*words), path, self.repx_of(path), None,
                                                           bool(request.time_seconds))
            try:
                yield guard
            finally:
                record_file(path).unlink(missing_ok=True)

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  prepare: Preparation, *, success: dict | None = None, on_spawn=None) -> ExitStatus:
        """`success` is not written here: the markers are written in the mirror by `finish`, and
        sent to the remote from there (`mirror_marker`)."""
        prepare()  # in the mirror, before the start sends the JSON files it wrote to the remote
        token = secrets.token_hex(8)
        record = record_file(guard.path)
        record.write_text(f"starting {token}\n")  # before the remote can start anything
        try:
            handle = await self._start(token, invocation, repx, guard.path, request)
        except asyncio.CancelledError:  # the process may have started all the same
            await asyncio.shield(self._stop_started(guard.path, token))
            raise
        record.write_text(f"{handle}\n")
        if on_spawn is not None:
            on_spawn(f"ssh:{handle.pid}")
        try:
            return await self._follow(handle, guard.path, repx, invocation.cwd, bool(request.time_seconds))
        except asyncio.CancelledError:
            await asyncio.shield(self._stop([handle]))
            raise

    def mirror_marker(self, repx: Path, marker: str, completion: str | None) -> None:
        """A marker (and a job's completion line) the engine wrote in the mirror, sent with the next
        poll cycle's command; a later marker for the same directory replaces it."""
        completions = self.mirror.path(self.mirror.local / "outputs" / COMPLETIONS)
        self._marks[self.mirror.path(repx)] = "\t".join(["M", self.mirror.path(repx), marker, completions,
                                                          completion or ""]) + "\n"
        self._ensure_polling()

    async def flush(self) -> None:
        """Sends the markers not yet on the remote now (a run ending, or the daemon stopping, must
        not leave them behind); those a poll cycle is sending are waited for, not sent again."""
        async with self._sending:
            if not self._marks:
                return
            sent = dict(self._marks)
            try:
                result = await self._command(["sh", self.helper, "status"], stdin="".join(sent.values()))
            except ConnectionProblem as exc:
                log.warning("could not send %d marker(s) to the remote: %s; the next connection sends them",
                            len(sent), exc)
                return
            if result.ok:
                self._sent(sent)
            else:
                log.warning("sending markers to the remote: %s", result.failure())

    async def reconcile(self) -> None:
        """Fills in, on the remote, the markers and completion lines of the mirror that an earlier
        repx did not get to send (killed, or the host unreachable when it stopped); one command."""
        listing = await asyncio.to_thread(self._mirror_marks)
        completions = self.mirror.local / "outputs" / COMPLETIONS
        try:
            result = await self._command(["sh", self.helper, "reconcile", self.mirror.path(completions)],
                                         stdin=listing)
        except ConnectionProblem as exc:
            log.warning("could not bring the remote's markers up to date: %s; the next connection does", exc)
            return
        if not result.ok:
            log.warning("bringing the remote's markers up to date: %s", result.failure())

    def _mirror_marks(self) -> str:
        """A line "REMOTE_REPX<tab>MARKER" per marker in the mirror, ".", then the mirror's completion
        lines; out/ directories (outputs `repxctl pull` brought) are not walked."""
        lines = []
        for directory, subdirs, files in os.walk(self.mirror.local / "outputs"):
            subdirs[:] = [d for d in subdirs if d != "out"]
            if os.path.basename(directory) == "repx":
                lines += [f"{self.mirror.path(directory)}\t{m}\n" for m in ("SUCCESS", "FAIL") if m in files]
        lines.append(".\n")
        with suppress(FileNotFoundError):
            lines.append((self.mirror.local / "outputs" / COMPLETIONS).read_text())
        return "".join(lines)

    def _sent(self, sent: dict[str, str]) -> None:
        for key, line in sent.items():
            if self._marks.get(key) == line:  # not replaced meanwhile
                del self._marks[key]

    def _ensure_polling(self) -> None:
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.create_task(self._poll())

    # ---- starting ---------------------------------------------------------------------------

    def _remote_guard(self, guard: Path) -> str:
        return self.mirror.path(guard)

    def repx_of(self, guard: Path) -> Path:
        """The repx directory a guard stands for (the inverse of OutputLayout.guard)."""
        return guard.parent.parent.parent / "outputs" / guard.name.replace("%", "/")

    async def _start(self, token: str, invocation: Invocation, repx: Path, guard: Path,
                     request: LaunchRequest) -> Handle:
        files = "".join(f"{self.mirror.path(p)}\n{base64.b64encode(data).decode()}\n"
                        for p, data in self.input_files(repx)) + ".\n"
        prefix = ":".join(self.mirror.path(d) for d in invocation.env.get("PATH", "").split(":")
                          if self.mirror.path(d) != d)
        argv = ["sh", self.helper, "start", token, self._remote_guard(guard), self.mirror.path(invocation.cwd),
                self.mirror.path(repx), str(request.time_seconds or 0), prefix,
                *(self.mirror.path(a) for a in invocation.argv)]
        while True:
            try:
                result = await self._command(argv, stdin=files)
            except ConnectionProblem as exc:
                log.warning("starting %s on the remote: %s; trying again", request.job_id, exc)
                await asyncio.sleep(self.retry_interval)
                continue
            words = result.stdout.split()
            if result.ok and len(words) == 2:
                return Handle(*words)
            raise RemoteError(f"the remote host could not start {request.job_id}: {result.failure()}")

    def input_files(self, repx: Path) -> list[tuple[Path, bytes]]:
        """The JSON files the process reads from `repx/` directories: its own, its job's, and a
        scatter-gather branch's (work_item.json), with local paths made remote."""
        outputs = self.mirror.local / "outputs"
        parts = repx.relative_to(outputs).parts[:-1]  # job, [branch, [step]] or [scatter]
        dirs = {outputs.joinpath(*parts[:n], "repx") for n in range(1, len(parts) + 1)} | {repx}
        found = []
        for directory in sorted(dirs):
            for path in sorted(directory.glob("*.json")):
                found.append((path, self.mirror.json_text(path.read_bytes())))
        return found

    async def _resolve(self, guard: Path, token: str) -> list[str]:
        """The handle of the process a start with `token` began on the remote, or none; in that
        case the remote revokes the token first, so that this start, if it is still on its way
        there, never runs the job: starting it again is then safe whenever the earlier repx died."""
        while True:
            try:
                result = await self._command(["sh", self.helper, "resolve", token, self._remote_guard(guard)])
            except ConnectionProblem:
                await asyncio.sleep(self.retry_interval)
                continue
            if not result.ok:
                raise RemoteError(f"the remote host could not tell whether {guard.name} started: {result.failure()}")
            words = result.stdout.split()
            return words if len(words) == 2 else []

    # ---- following --------------------------------------------------------------------------

    async def _follow(self, handle: Handle, guard: Path, repx: Path, out: Path | None,
                      time_limited: bool) -> ExitStatus:
        if out is None:  # re-attached: the process's out/ is its repx's sibling
            out = repx.parent / "out"
        future = asyncio.get_running_loop().create_future()
        self._followed[str(guard)] = _Followed(handle, guard, repx, out, future, time_limited)
        self._ensure_polling()
        try:
            return await asyncio.shield(future)
        finally:
            self._followed.pop(str(guard), None)

    async def _poll(self) -> None:
        while self._followed or self._marks:
            await asyncio.sleep(self.poll_interval)
            async with self._sending:
                followed = [f for f in self._followed.values() if not f.future.done()]
                marks = dict(self._marks)
                if not followed and not marks:
                    continue
                listing = "".join(marks.values()) + "".join("\t".join([self._remote_guard(f.guard), f.handle.pid, f.handle.started,
                                              self.mirror.path(f.repx), self.mirror.path(f.out)]) + "\n"
                                  for f in followed)
                try:
                    result = await self._command(["sh", self.helper, "status"], stdin=listing)
                except ConnectionProblem as exc:
                    log.warning("remote status of %d process(es): %s; asking again", len(followed), exc)
                    continue
                if not result.ok or not result.stdout.rstrip().endswith("E"):
                    log.warning("remote status: %s", result.failure())
                    continue
                self._sent(marks)
            try:
                self._settle(followed, result.stdout)
            except (OSError, ValueError) as exc:
                log.error("writing what the remote sent back: %s", exc)
                for f in followed:
                    if not f.future.done():
                        f.future.set_exception(RemoteError(f"could not store the remote results: {exc}"))

    def _settle(self, followed: list[_Followed], answer: str) -> None:
        """Files first, then outcomes: a job's logs are in place when its status is known."""
        outcomes: dict[int, ExitStatus] = {}
        lines = iter(answer.splitlines())
        for line in lines:
            words = line.split()
            if words[:1] == ["F"]:
                self._receive(line[2:], next(lines, ""))
            elif words[:1] == ["P"] and len(words) >= 3:
                index, state = int(words[1]), words[2]
                if state == "exit" and len(words) >= 4:
                    outcomes[index] = self._status(words[3], words[4] if len(words) > 4 else "")
                elif state == "gone":
                    outcomes[index] = ExitStatus.with_cause(
                        -9, None, "ended on the remote host without an exit status (killed, or the host restarted)")
        for index, status in outcomes.items():
            f = followed[index]
            if f.time_limited and status == TIMED_OUT:
                status = ExitStatus.with_cause(status, "timeout")
            # Kept beside the guard until the outcome is recorded: a repx restarted in between adopts it.
            exit_file(f.guard).write_text(f"{int(status)} {DISK_FULL}\n" if status.cause == DISK_FULL else f"{int(status)}\n")
            if not f.future.done():
                f.future.set_result(status)

    def _status(self, number: str, free: str) -> ExitStatus:
        """A failure on a (nearly) full remote filesystem names it: the local mirror has room."""
        status = int(number)
        if status != 0 and free.isdigit() and int(free) < DISK_FULL_BELOW:
            where = self.mirror.path(self.mirror.local / "outputs")
            return ExitStatus.with_cause(status, DISK_FULL, f"exited with status {status}: the remote disk is full (no space"
                                         f" left under {where}); free space there and retry the run")
        return ExitStatus(status)

    def _receive(self, remote: str, encoded: str) -> None:
        path = self.mirror.local_path(remote)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.repx-tmp")
        tmp.write_bytes(base64.b64decode(encoded))
        tmp.replace(path)

    async def _stop_started(self, guard: Path, token: str) -> None:
        try:
            words = await asyncio.wait_for(self._resolve(guard, token), self.retry_interval * 5)
        except (TimeoutError, RemoteError):
            log.warning("could not learn whether %s started on the remote; it is left running", guard.name)
            return
        if words:
            await self._stop([Handle(*words)])

    async def _stop(self, handles: list[Handle]) -> None:
        try:
            result = await self._command(["sh", self.helper, "stop", *(w for h in handles for w in (h.pid, h.started))])
            if not result.ok:
                log.warning("stopping remote processes: %s", result.failure())
        except ConnectionProblem as exc:
            log.warning("could not stop remote process(es) %s: %s", ", ".join(h.pid for h in handles), exc)

    async def _command(self, argv: list[str], stdin: str | None = None) -> CommandResult:
        try:
            result = await self.commands.run(argv, stdin=stdin, timeout=60.0)
        except self.transient as exc:
            raise ConnectionProblem(str(exc) or type(exc).__name__) from exc
        if result.returncode in (SSH_FAILURE, 124):  # ssh could not reach the host, or the call timed out
            raise ConnectionProblem(result.failure())
        return result


def _read_record(guard: Path) -> list[str]:
    try:
        return record_file(guard).read_text().split()
    except FileNotFoundError:
        return []


