"""The spawner: a small helper process that starts the jobs' processes, reaps them and writes
their exit records.

Run as `python -S spawner.py FD` (standard library only, so it starts without the package or
site-packages), in its own session. The launcher sends it one request per job over the
SOCK_SEQPACKET socket FD: a JSON object (argv, env_id, cwd, identity, logs, exit_record, prepare;
env too when env_id is new) with the descriptors the child gets as 3, 4, ... attached (the guard's
lock). For a first attempt it makes the job's directories and writes its inputs.json and
parameters.json (`prepare`); it opens the logs (the child's stdout and stderr, truncated) and the
exit record (a placeholder written) itself: eight file operations a job fewer on the launcher's
event loop, which is what limits throughput, and the JSON encoding with them. It
forks; the child becomes a child subreaper (descendants
that leave the job's session and lose their parent stay under it, where a stop finds them),
starts a new session, takes the identity and execs the job itself: no wrapper process. The
spawner answers `{"id", "pid"}` right after the fork; when the child exits it writes the status
into the exit record (negative for a signal, 127 if the exec failed, the reason then in stderr),
for a success also the job's marker and completion line when asked (`success`), and only then
lets go of its copy of the guard's lock, so whoever takes the lock next finds the
record; then it answers `{"pid", "status", "recorded"}`.

Why a separate process: forking the launcher (a large asyncio process) with a `preexec_fn` for
the subreaper costs a full fork and a wait for the exec on its event loop, asyncio watches every
child with a thread, and a shell wrapper costs a process start per job; forking this small
process costs little, runs on another core, and one descriptor tells about every child. When the
launcher goes away (EOF, kill -9) the spawner stays until its last child exited and its record
is written, then exits: a later launcher adopts those records instead of running the jobs again."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import selectors
import signal
import socket
import sys

PR_SET_CHILD_SUBREAPER = 36
MAX_REQUEST_BYTES = 1 << 20
MAX_FDS = 8
FIRST_KEPT_FD = 3  # the descriptors after stdout and stderr land on 3, 4, ... in the child
CHILD_FDS = FIRST_KEPT_FD + MAX_FDS  # a child's descriptors are 0 .. CHILD_FDS - 1 at most
KEPT_ENVIRONMENTS = 8  # as in processes.py: the launcher refers only to the newest this many


LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
# No status: "-" is no number. It holds a block for the status, so that the overwrite when the
# job exits finds room even after the job filled the disk.
PLACEHOLDER = b"-\n"


def prepare_first_attempt(request: dict) -> bool:
    """The job's directories and its JSON files, when the request asks for them (`prepare`:
    `dirs`, the job's directory then its `out/` and `repx/`; `json`, [path, value] pairs).
    Only a first attempt is prepared here: False when the job's directory exists already (an
    earlier attempt may have left outputs and markers to clear) or cannot be made, and the
    launcher then prepares it itself. The same bytes as the launcher's `layout.write_json`."""
    spec = request.get("prepare")
    if not spec:
        return True
    root, *dirs = spec["dirs"]
    try:
        os.mkdir(root)
    except OSError:
        return False
    for path in dirs:
        os.mkdir(path)
    for path, value in spec["json"]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            data = memoryview(json.dumps(value, indent=2).encode())
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
    return True


def open_files(request: dict) -> tuple[list[int], int | None]:
    """The logs (stdout, stderr) and the exit record of `request`, opened; closed again on failure."""
    opened: list[int] = []
    try:
        for path in request.get("logs") or ():
            opened.append(os.open(path, LOG_FLAGS, 0o666))
        record = None
        if request.get("exit_record"):
            record = os.open(request["exit_record"], LOG_FLAGS, 0o600)
            opened.append(record)
            os.write(record, PLACEHOLDER)
    except OSError:
        for fd in opened:
            os.close(fd)
        raise
    return opened[:2] if request.get("logs") else [], record


class ChildDescriptors:
    """The spawner's descriptors 0 .. CHILD_FDS - 1, pointed at a job's files right before its
    fork and back right after. The child then finds them in place and has little to do between
    fork and exec: every page it touches there is a copy-on-write fault, which on a VM costs
    more than the system calls saved (measured: ~0.35 ms a job less than arranging them in the
    child). So that nothing else lands on those numbers, they are held by placeholders (closed
    on exec) and everything the spawner opens gets a higher number."""

    def __init__(self, devnull: int) -> None:
        self.devnull = devnull
        self.own = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CHILD_FDS) for fd in (0, 1, 2)]
        for fd in range(FIRST_KEPT_FD, CHILD_FDS):
            os.dup2(devnull, fd, inheritable=False)
        self.home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @contextlib.contextmanager
    def pointed_at(self, given: list[int], cwd: str):
        """`given` as 1, 2, 3, ... (stdin from /dev/null) and `cwd` as the working directory for
        the block; yields whether the child must still change into `cwd` (the spawner could not:
        the child then fails on it and says why, as any failure before its exec)."""
        try:
            os.dup2(self.devnull, 0)
            for target, fd in enumerate(given, 1):
                os.dup2(fd, target)
            try:
                os.chdir(cwd)
                moved = True
            except OSError:
                moved = False
            yield not moved
        finally:
            for target, fd in enumerate(self.own):
                os.dup2(fd, target)
            for target in range(FIRST_KEPT_FD, len(given) + 1):
                os.dup2(self.devnull, target, inheritable=False)
            os.fchdir(self.home)


def high_descriptor(fd: int) -> int:
    """`fd` moved above the numbers the children's descriptors take (closed on exec)."""
    if fd >= CHILD_FDS:
        os.set_inheritable(fd, False)
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CHILD_FDS)
    os.close(fd)
    return moved


def start_child(request: dict, env: dict, given: list[int], descriptors: ChildDescriptors, libc,
                policy: int | None) -> int:
    """`given`: the child's stdout, stderr, then its descriptors 3, 4, ..."""
    with descriptors.pointed_at(given, request["cwd"]) as chdir_in_child:
        pid = os.fork()
        if pid:
            return pid
        try:
            # As a shell would start it: Python ignores these two, and an ignored signal stays
            # ignored across exec (the spawner's SIGCHLD handler does not: exec resets it).
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            if libc is not None:
                libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            os.setsid()
            if policy is not None:  # the launcher's scheduling policy, not the spawner's batch one
                os.sched_setscheduler(0, policy, os.sched_param(0))
            identity = request.get("identity")
            if identity is not None:
                uid, gid, groups = identity
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            if chdir_in_child:
                os.chdir(request["cwd"])
            argv = request["argv"]
            if "/" in argv[0]:
                os.execve(argv[0], argv, env)
            os.execvpe(argv[0], argv, env)  # found on the job's PATH
        except BaseException as exc:  # noqa: BLE001 - anything before exec: say why on the job's stderr
            with open(2, "w", closefd=False) as err:
                err.write(f"repx: cannot start the job's process: {exc}\n")
        finally:
            os._exit(127)


class Children:
    """The started processes, each with the descriptors held for it until it is reaped: the
    guard's lock (so no one takes it before its exit record is written) and the exit record."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel: socket.socket | None = channel
        self.held: dict[int, tuple[list[int], int | None, dict | None]] = {}

    def tell(self, answer: dict) -> None:
        if self.channel is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.channel.send(json.dumps(answer).encode())

    def reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = os.waitstatus_to_exitcode(wait_status)
            fds, exit_record, success = self.held.pop(pid, ([], None, None))
            if exit_record is not None:
                record_exit(exit_record, status)
            # Under the guard's lock still, as the launcher would write them.
            recorded = status == 0 and success is not None and record_success(success)
            for fd in fds:
                os.close(fd)
            self.tell({"pid": pid, "status": status, "recorded": recorded})


def record_success(success: dict) -> bool:
    """The evidence of a job that exited with 0, when its request asked for it (`success`): its
    SUCCESS marker (empty: it exists or not), then its line appended to completions.jsonl in one
    write. False when either failed: the launcher then writes them (and says why)."""
    try:
        os.close(os.open(success["marker"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        fd = os.open(success["completions"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, success["line"].encode())
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def record_exit(fd: int, status: int) -> None:
    """Overwrite the placeholder in place: the block is the file's already, so this needs no
    room even when the job filled the disk."""
    line = f"{status}\n".encode()
    with contextlib.suppress(OSError):
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))


def batch_scheduling() -> int | None:
    """Make the spawner a batch task: woken by a request, it then waits for its turn instead of
    preempting the launcher, whose event loop is what limits throughput (without this a request's
    send took ~0.8 ms of the launcher's time on a busy 2-CPU machine). Returns the policy the jobs
    get back (the launcher's), or None where this is not available."""
    try:
        policy = os.sched_getscheduler(0)
        if policy == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            return policy
    except (AttributeError, OSError):
        pass
    return None


def serve(channel: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    policy = batch_scheduling()
    devnull = high_descriptor(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    descriptors = ChildDescriptors(devnull)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup byte gets written
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children = Children(channel)
    environments: dict[int, dict] = {}  # by id: the launcher sends each environment once
    while children.channel is not None or children.held:
        for key, _ in selector.select():
            if key.fileobj is channel:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST_BYTES, MAX_FDS)
                except ConnectionResetError:
                    data, fds = b"", []
                for fd in fds:  # the child gets its own copies, at fixed numbers
                    os.set_inheritable(fd, False)
                if not data:
                    # The launcher is gone: the jobs run on, and their exit records still get
                    # written; a later launcher adopts them.
                    selector.unregister(channel)
                    children.channel = None
                    continue
                request = json.loads(data)
                if "env" in request:  # a new environment: later requests send only its id
                    environments[request["env_id"]] = request["env"]
                    for old in [env_id for env_id in environments if env_id <= request["env_id"] - KEPT_ENVIRONMENTS]:
                        del environments[old]
                opened: list[int] = []
                try:
                    if not prepare_first_attempt(request):
                        children.tell({"id": request["id"], "unprepared": True})
                        for fd in fds:
                            os.close(fd)
                        continue
                    logs, record = open_files(request)
                    opened = [*logs, *([] if record is None else [record])]
                    pid = start_child(request, environments[request["env_id"]], [*logs, *fds], descriptors, libc, policy)
                except OSError as exc:  # a log not writable, or fork failed (no memory, too many processes)
                    children.tell({"id": request["id"], "error": exc.strerror or str(exc), "errno": exc.errno,
                                   "filename": exc.filename})
                    for fd in opened:
                        os.close(fd)
                    kept = []
                else:
                    # Held until the child is reaped: the guard's lock (so no one takes it before
                    # the exit record is written) and the record itself, last.
                    kept = [*fds, record] if record is not None else fds
                    children.held[pid] = (kept, record, request.get("success"))
                    children.tell({"id": request["id"], "pid": pid})
                    for fd in logs:
                        os.close(fd)
                for fd in fds:
                    if fd not in kept:
                        os.close(fd)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 4096):
                        pass
                children.reap()


if __name__ == "__main__":
    # Closed on exec: the jobs must not hold it, or the launcher's exit would go unseen.
    channel = socket.socket(fileno=high_descriptor(int(sys.argv[1])))
    serve(channel)
