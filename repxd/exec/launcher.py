"""Starting a job's process and waiting for it, at most once at a time per job directory.

A process runs under a small shell wrapper that holds an flock on its guard's lock file
(inherited from the launcher) for its whole life and writes its exit status next to it.
Guards (`<stem>.lock`, `<stem>.exit`) live under `<base>/cache/guards/`, outside the upstream
output layout. So a launcher that dies (kill -9, crash, restart) leaves a process that can be
adopted: the next launcher for the same directory waits for the lock, then reads `.exit` instead
of starting the job again. This is what makes agent restarts safe. The systemd launcher
(`systemd_unit`) keeps the same guard files and adds unit names on top."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import signal
import subprocess
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .runtimes import Invocation

TERMINATE_GRACE_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.1
LOCK_FILE = "lock"
EXIT_FILE = "exit"

# Readers look at the exit file only once they hold the lock, which this shell holds until it
# exits, so a plain builtin write is enough (no extra process per job for an atomic rename).
_WRAPPER = 'exit_file=$1; shift; "$@"; status=$?; echo $status > "$exit_file"; exit $status'
# Before a job runs as another user: its `out/` emptied and handed to that user (run as root).
HAND_OVER = 'find "$1" -mindepth 1 -delete && chown "$2" "$1"'


_made_dirs: set[Path] = set()


class ExitStatus(int):
    """A process's exit status (negative for a signal), with the cause when systemd knows more
    than the number: `oom-kill` or `timeout`."""

    cause: str | None = None

    @classmethod
    def with_cause(cls, status: int, cause: str | None) -> ExitStatus:
        result = cls(status)
        result.cause = cause
        return result


@dataclass
class LaunchRequest:
    """One process to start: its unit name and what it may use (the systemd launcher applies
    the limits; the subprocess launcher relies on admission alone)."""

    unit: str  # repx-job-<jobId>[.<step>]-<attempt>.service
    pattern: str  # the same step under any attempt, to find a process to re-attach to
    job_id: str
    run_id: str | None = None
    cpus: int = 1
    mem: int = 0
    time_seconds: int | None = None
    device_allow: list[tuple[str, str]] = field(default_factory=list)
    user: int | None = None  # run as this uid (the submitter); the launcher then owns `out/`


_UNIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.-")


def unit_name_part(text: str) -> str:
    return "".join(c if c in _UNIT_CHARS else "_" for c in text)


def launch_request(job_id: str, step: str, attempt: int | None, **limits) -> LaunchRequest:
    """Names for the process of `step` ("" for the job's own process) of `job_id`."""
    stem = unit_name_part(job_id)[:180] + (f".{unit_name_part(step)}" if step else "")
    return LaunchRequest(f"repx-job-{stem}-{attempt or 0}.service", f"repx-job-{stem}-*.service", job_id, **limits)


def exit_file(guard: Path) -> Path:
    return guard.with_name(f"{guard.name}.{EXIT_FILE}")


class Guard:
    """The held lock of one process directory, and the status an earlier launcher's process left."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.leftover_status = adoptable_status(path)


@asynccontextmanager
async def guarded(path: Path):
    """Hold the directory's lock for the block, waiting while another process holds it (a process
    of an earlier or concurrent launcher still running). Record outcomes inside the block, so a
    waiting launcher sees them once it gets the lock."""
    if path.parent not in _made_dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        _made_dirs.add(path.parent)
    fd = os.open(path.with_name(f"{path.name}.{LOCK_FILE}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_SECONDS)
        yield Guard(path, fd)
    finally:
        os.close(fd)


def adoptable_status(guard: Path) -> ExitStatus | None:
    """The exit status a finished, not yet recorded process left behind, if any: a number from
    the shell wrapper, or `EXIT_CODE EXIT_STATUS SERVICE_RESULT` from a unit's ExecStopPost."""
    try:
        words = exit_file(guard).read_text().split()
    except FileNotFoundError:
        return None
    try:
        if len(words) == 1:
            return ExitStatus(int(words[0]))
        if len(words) == 3:
            return status_from_unit(*words)
    except (ValueError, KeyError):
        pass
    return None


def status_from_unit(code: str, status: str, result: str) -> ExitStatus | None:
    """systemd's `$EXIT_CODE $EXIT_STATUS $SERVICE_RESULT` as an exit status; None for a unit
    stopped from outside (shutdown, a stop request), which is not the job's outcome."""
    if code != "exited" and result == "success":
        return None
    if code == "exited":
        number = int(status)
    else:  # killed or dumped: the signal's name (KILL) or number
        number = -(int(status) if status.isdigit() else signal.Signals[f"SIG{status}"].value)
    return ExitStatus.with_cause(number, result if result in ("oom-kill", "timeout") else None)


class SubprocessLauncher:
    """Jobs as child processes in their own sessions (no systemd needed)."""

    name = "subprocess"

    def guarded(self, path: Path, request: LaunchRequest):
        return guarded(path)

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  on_spawn: Callable[[str], None] | None = None) -> int:
        argv = list(invocation.argv)
        if request.user is not None and request.user != os.geteuid():
            # The wrapper stays the agent's (it holds the guard and writes the exit record); only
            # the job itself drops to the user, with that user's groups.
            await asyncio.to_thread(subprocess.run, ["/bin/sh", "-c", HAND_OVER, "repx-out", str(invocation.cwd),
                                                     str(request.user)], check=True)
            gid = pwd.getpwuid(request.user).pw_gid
            argv = ["setpriv", f"--reuid={request.user}", f"--regid={gid}", "--init-groups", "--", *argv]
        return await spawn_and_wait(replace(invocation, argv=argv), repx, guard,
                                    None if on_spawn is None else lambda pid: on_spawn(f"pid:{pid}"),
                                    time_limit=request.time_seconds)


async def spawn_and_wait(invocation: Invocation, repx: Path, guard: Guard,
                         on_spawn: Callable[[int], None] | None = None, time_limit: int | None = None) -> int:
    """Run `invocation` with stdout/stderr written to `repx/{stdout,stderr}.log`; the process
    inherits the guard's lock. Returns the exit status (negative for a signal), with the cause
    `timeout` when it ran past `time_limit` seconds and was stopped. Cancelling the awaiting
    task stops the whole process group."""
    with open(repx / "stdout.log", "wb") as out, open(repx / "stderr.log", "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", _WRAPPER, "repx-job", str(exit_file(guard.path)), *invocation.argv,
            cwd=invocation.cwd, env=invocation.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True, pass_fds=(guard.fd,),
        )
    if on_spawn is not None:
        on_spawn(proc.pid)
    try:
        return await asyncio.wait_for(proc.wait(), time_limit)
    except TimeoutError:
        await _stop(proc)
        return ExitStatus.with_cause(await proc.wait(), "timeout")
    except asyncio.CancelledError:
        await asyncio.shield(_stop(proc))
        raise


def forget_exit(guard: Path) -> None:
    """Called once the outcome is recorded (marker written), so it is not adopted again."""
    with contextlib.suppress(FileNotFoundError):
        exit_file(guard).unlink()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), wait)
            return
        except TimeoutError:
            continue
