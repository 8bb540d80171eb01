"""The spawner: a small helper process that starts the jobs' wrapper processes and reaps them.

Run as `python -S spawner.py FD` (standard library only, so it starts without the package or
site-packages). The launcher sends it one request per job over the SOCK_SEQPACKET socket FD:
a JSON object (argv, env, cwd, identity) with the process's descriptors attached (stdout,
stderr, then the ones to keep open, which the child gets as 3, 4, ...: the guard's lock and the
exit record). It forks, and the
child becomes a child subreaper (so descendants that leave the job's session stay under the
wrapper, where a stop finds them), starts a new session, takes the identity and execs. The
spawner answers `{"id", "pid"}` right after the fork and `{"pid", "status"}` when the
wrapper exits (negative for a signal, 127 if the exec failed; the reason is then in stderr).

Why a separate process: forking the launcher (a large asyncio process) with a `preexec_fn` for
the subreaper costs a full fork and a wait for the exec on its event loop, and asyncio watches
every child with a thread; forking this small process costs little, runs on another core, and
one descriptor tells about every child. When the launcher goes away (EOF) the spawner exits
without touching the wrappers: they run on, and a later launcher adopts their exit records."""

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


def start_child(request: dict, fds: list[int], devnull: int, libc) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        # Every descriptor first above the ones it may land on, so no move overwrites another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_KEPT_FD + MAX_FDS) for fd in [devnull, *fds]]
        for target, fd in enumerate(high):
            os.dup2(fd, target)  # 0 stdin, 1 stdout, 2 stderr, then the kept ones from FIRST_KEPT_FD
        signal.set_wakeup_fd(-1)
        # As a shell would start it: Python ignores SIGPIPE and SIGXFSZ, this process SIGINT.
        for number in (signal.SIGCHLD, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        if libc is not None:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        os.setsid()
        identity = request.get("identity")
        if identity is not None:
            uid, gid, groups = identity
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        os.chdir(request["cwd"])
        os.execve(request["argv"][0], request["argv"], request["env"])
    except BaseException as exc:  # noqa: BLE001 - anything before exec: say why on the job's stderr
        with open(2, "w", closefd=False) as err:
            err.write(f"repx: cannot start the job's process: {exc}\n")
    finally:
        os._exit(127)


def serve(channel: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup byte gets written
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is channel:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST_BYTES, MAX_FDS)
                except ConnectionResetError:
                    data, fds = b"", []
                for fd in fds:  # the child gets its own copies, at fixed numbers
                    os.set_inheritable(fd, False)
                if not data:
                    return  # the launcher is gone: leave the wrappers running
                request = json.loads(data)
                try:
                    pid = start_child(request, fds, devnull, libc)
                    channel.send(json.dumps({"id": request["id"], "pid": pid}).encode())
                except OSError as exc:  # fork failed (no memory, too many processes)
                    channel.send(json.dumps({"id": request["id"], "error": str(exc)}).encode())
                finally:
                    for fd in fds:
                        os.close(fd)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 4096):
                        pass
                reap(channel)


def reap(channel: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel.send(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}).encode())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops the jobs
    channel = socket.socket(fileno=int(sys.argv[1]))
    channel.set_inheritable(False)  # the jobs must not hold it: the launcher's exit would go unseen
    with contextlib.suppress(BrokenPipeError):
        serve(channel)
