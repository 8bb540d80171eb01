"""The listing helper: a small root process that lists a Lab's files as its submitter.

lab_access starts it once (`python -I -S lister_helper.py FD`), and it then serves every
listing: for each request it forks itself (a few MB, where the daemon is hundreds), the child
takes the submitter's uid, gid and groups for good and walks the Lab, and the answer goes back on
a socket the daemon passed with the request. Forking the daemon itself for a `find` was 40% of a
submit's cost. It imports only the standard library, so it stays small; it talks only over the
socket it inherited (nobody else can reach it) and exits when the daemon closes its end.

A request is one JSON message {"uid", "gid", "groups", "path", "timeout"} with one file
descriptor; the answer written there is b"<length>\\n" and the listing, or nothing at all when
the submitter cannot read every part of the Lab (missing and unreadable look the same)."""

import errno
import json
import os
import signal
import socket
import stat
import sys


def listing(root: str) -> bytes:
    """Every file and directory under `root`, links followed, in a stable order, each with its
    identity (device, inode, size, mtime, ctime, mode). Raises OSError when one cannot be read
    by this process (or a link loops back to a directory above it), as `find -L` fails."""
    lines = []
    pending = [(root, frozenset())]
    while pending:
        path, above = pending.pop()
        st = os.stat(path)
        directory = stat.S_ISDIR(st.st_mode)
        # stat proves the name is reachable; the loader reads contents, so reading must be allowed too
        if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
            raise PermissionError(errno.EACCES, "not readable", path)
        lines.append(b"%s\0%d %d %d %d %d %o\0" % (os.fsencode(path), st.st_dev, st.st_ino, st.st_size,
                                                  st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
        if directory:
            if (st.st_dev, st.st_ino) in above:
                raise OSError(errno.ELOOP, "a link loops back to a directory above it", path)
            inside = above | {(st.st_dev, st.st_ino)}
            pending.extend((os.path.join(path, name), inside) for name in sorted(os.listdir(path), reverse=True))
    return b"".join(lines)


def answer(request: bytes, reply: int) -> None:
    """In the forked child: become the submitter, list, write the answer to `reply`."""
    asked = json.loads(request)
    signal.alarm(int(asked["timeout"]))  # a listing that hangs (a stuck mount) ends with the child
    os.setgroups(asked["groups"])
    os.setresgid(asked["gid"], asked["gid"], asked["gid"])
    os.setresuid(asked["uid"], asked["uid"], asked["uid"])
    os.chdir("/")
    try:
        found = listing(asked["path"])
    except (OSError, RecursionError):
        return  # nothing written: refused
    out = memoryview(b"%d\n" % len(found) + found)
    while out:
        out = out[os.write(reply, out):]


def reap(_signum, _frame) -> None:
    """Collect finished children (rather than SIG_IGN: their CPU time then counts as ours)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def serve(control: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the daemon's to act on; EOF ends us
    signal.signal(signal.SIGCHLD, reap)
    while True:
        message, fds, _flags, _address = socket.recv_fds(control, 1 << 20, 1)
        if not message:
            return  # the daemon closed its end (or is gone)
        if not fds:
            continue
        if os.fork() == 0:
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                answer(message, fds[0])
            finally:
                os._exit(0)
        os.close(fds[0])


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
