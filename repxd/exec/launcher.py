"""Starting a job's process and waiting for it, at most once at a time per job directory.

A process holds an flock on its guard's lock file (inherited from the launcher) for its whole
life, and the spawner (`spawner.py`), its parent, writes its exit status next to it before it lets
go of its own hold on the lock.
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
import shutil
import signal
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .layout import Preparation, UnreadableJobFile, read_job_file
from .processes import Identity, NotPrepared, SpawnedProcess, spawner
from .runtimes import Invocation

TERMINATE_GRACE_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.1
LOCK_FILE = "lock"
EXIT_FILE = "exit"
EXIT_RECORD_BYTES = 256  # "EXIT_CODE EXIT_STATUS SERVICE_RESULT" fits many times over



_made_dirs: set[Path] = set()


# Before a job unit runs as another user: its `out/` emptied and handed to that user (as root).
HAND_OVER = 'find "$1" -mindepth 1 -delete && chown "$2" "$1"'


class ExitStatus(int):
    """A process's exit status (negative for a signal), with the cause when systemd knows more
    than the number: `oom-kill` or `timeout`. `recorded`: whoever wrote this status also wrote
    the evidence of the success it was given (`run`'s `success`), so `finish` does not again."""

    cause: str | None = None
    reason: str | None = None  # the whole sentence, when a cluster scheduler says more
    recorded: bool = False

    @classmethod
    def with_cause(cls, status: int, cause: str | None, reason: str | None = None, *,
                   recorded: bool = False) -> ExitStatus:
        result = cls(status)
        result.cause = cause
        result.reason = reason
        result.recorded = recorded
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
    resources: dict = field(default_factory=dict)  # the merged resources (a cluster launcher asks for them)
    after: list[str] = field(default_factory=list)  # cluster jobs to start after (their success)


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
    the spawner, or `EXIT_CODE EXIT_STATUS SERVICE_RESULT` from a unit's ExecStopPost."""
    try:
        # A job running as the daemon's user could leave a FIFO here: read without blocking.
        words = read_job_file(exit_file(guard), EXIT_RECORD_BYTES).decode(errors="replace").split()
    except (FileNotFoundError, UnreadableJobFile):
        return None
    try:
        if len(words) == 1:
            return ExitStatus(int(words[0]))
        if len(words) == 2 and words[1] == DISK_FULL:
            return ExitStatus.with_cause(int(words[0]), DISK_FULL)
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
    """Jobs as child processes in their own sessions (no systemd needed). As root, a job with a
    `request.user` runs as that user with its groups, in an `out/` handed over to it.

    The launcher interface (every launcher has it): `guarded(path, request)`, an async context
    giving the directory's `Guard`; `run(invocation, repx, guard, request, prepare, *, success,
    on_spawn)` makes the process's directories ready (calls `prepare` before it needs them, or
    has its spawner do it), starts the process and returns its `ExitStatus`. `success`, the
    evidence of a success, is written by a launcher that can (the status is then `recorded`) and
    left to `finish` by the others."""

    name = "subprocess"

    def guarded(self, path: Path, request: LaunchRequest):
        return guarded(path)

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  prepare: Preparation, *, success: dict | None = None,
                  on_spawn: Callable[[str], None] | None = None) -> ExitStatus:
        identity = None
        if request.user is not None:
            prepare()  # here, not by the spawner: out/ must exist to be handed over
            identity = user_identity(request.user)
            await asyncio.to_thread(hand_over, invocation.cwd, identity)
        return await spawn_and_wait(invocation, repx, guard,
                                    None if on_spawn is None else lambda pid: on_spawn(f"pid:{pid}"),
                                    identity=identity, time_limit=request.time_seconds,
                                    prepare=prepare if identity is None else None, success=success)


def user_identity(uid: int) -> Identity:
    """The uid with its primary group and supplementary groups, as a login would have them."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Identity(uid, uid, ())  # no passwd entry: no groups beyond its own number
    return Identity(uid, entry.pw_gid, tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))


def hand_over(out: Path, identity: Identity) -> None:
    """An empty `out/` owned by the job's user and private to it: earlier attempts may have left
    files of that user, and outputs are the submitter's to share."""
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    os.chown(out, identity.uid, identity.gid)
    out.chmod(0o750)


async def spawn_and_wait(invocation: Invocation, repx: Path, guard: Guard,
                         on_spawn: Callable[[int], None] | None = None, *,
                         identity: Identity | None = None, time_limit: int | None = None,
                         prepare: Preparation | None = None, success: dict | None = None) -> ExitStatus:
    """Run `invocation` with stdout/stderr written to `repx/{stdout,stderr}.log`; the process
    inherits the guard's lock, and the spawner writes its status into the exit file (the job's
    user may not write in the guards' directory). Returns the exit status (negative for a
    signal), with cause "timeout" when `time_limit` seconds ran out. Cancelling the awaiting task
    stops every process the job started, in or out of its session: the job's process is a child
    subreaper (the spawner makes it one), so descendants that leave the job's session and lose
    their parent stay under it. `prepare` (None: ready already): done before the start, by the
    spawner for a first attempt. `success`: evidence the spawner writes if the process exits with
    0 (the status's `recorded` then says so)."""
    # The job gets the guard's lock as descriptor 3 (held while it or a descendant runs). The
    # spawner creates the logs and the exit record (with a placeholder holding a block for the
    # status, so that its overwrite finds room even after the job filled the disk), and writes the
    # record when the job exits.
    starting = asyncio.ensure_future(_start(invocation, repx, guard, identity, prepare, success))
    try:
        proc = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Cancelled (Ctrl-C) after the request went out: the spawner may start the process
        # anyway, and nobody would stop it. Wait for its answer, then stop what it started.
        with contextlib.suppress(Exception):
            await asyncio.shield(_stop_cancelled(await asyncio.shield(starting), guard.path))
        raise
    if on_spawn is not None:
        on_spawn(proc.pid)
    try:
        status = await asyncio.wait_for(proc.wait(), time_limit)
        return ExitStatus.with_cause(status, None, recorded=status.recorded)
    except TimeoutError:
        await asyncio.shield(_stop(proc))
        return ExitStatus.with_cause(proc.returncode if proc.returncode is not None else -signal.SIGKILL, "timeout")
    except asyncio.CancelledError:
        await asyncio.shield(_stop_cancelled(proc, guard.path))
        raise


async def _start(invocation: Invocation, repx: Path, guard: Guard, identity: Identity | None,
                 prepare: Preparation | None, success: dict | None) -> SpawnedProcess:
    def spawn(first_attempt: dict | None):
        return spawner().spawn(invocation.argv, invocation.env, str(invocation.cwd), [guard.fd], identity,
                               logs=(f"{repx}/stdout.log", f"{repx}/stderr.log"),
                               exit_record=str(exit_file(guard.path)), prepare=first_attempt, success=success)

    first_attempt = None if prepare is None else prepare.first_attempt()
    if first_attempt is not None:
        try:
            return await spawn(first_attempt)
        except NotPrepared:  # a retry: its out/ emptied and markers cleared here
            pass
    if prepare is not None:
        prepare()
    return await spawn(None)


async def _stop_cancelled(proc: SpawnedProcess, guard: Path) -> None:
    """Stop a cancelled job and drop the exit record the spawner wrote for it: a cancelled
    attempt has no outcome, and the next attempt must run rather than adopt its status."""
    await _stop(proc)
    forget_exit(guard)


DISK_FULL = "disk-full"


def note_disk_full(guard: Path, status: int) -> ExitStatus:
    """The status with the cause "disk-full", also written into its exit record: an agent that
    adopts the record after a restart still knows why, though the space may be free by then. An
    overwrite within the record's block, so it finds room on the full disk."""
    with contextlib.suppress(OSError):
        fd = os.open(exit_file(guard), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, f"{int(status)} {DISK_FULL}\n".encode(), 0)
        finally:
            os.close(fd)
    return ExitStatus.with_cause(status, DISK_FULL)


def forget_exit(guard: Path) -> None:
    """Called once the outcome is recorded (marker written), so it is not adopted again."""
    with contextlib.suppress(FileNotFoundError):
        exit_file(guard).unlink()


async def _stop(proc: SpawnedProcess) -> None:
    """TERM, then after a grace period KILL, to the job's process group and to every process under
    it (those in other sessions included)."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_SECONDS), (signal.SIGKILL, None)):
        targets = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if proc.returncode is not None and not targets:
            return
        try:
            await asyncio.wait_for(proc.wait(), wait)
            if not _descendants(proc.pid):
                return
            await asyncio.sleep(LOCK_POLL_SECONDS)
        except TimeoutError:
            continue


def _descendants(root: int) -> list[int]:
    """Processes under `root` by their parent links in /proc (where /proc is mounted)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
