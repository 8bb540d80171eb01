"""The listing helper: a small root process that lists a Lab's files as its submitter.

lab_access starts it once (`python -I -S lister_helper.py FD`), and it then serves every
listing. Forking the daemon itself for a `find` on every submit was 40% of a submit's cost; here
a submitter's first listing forks this process (a few MB, where the daemon is hundreds) into a
worker that takes the submitter's uid, gid and groups for good (all three ids: it can never be
root again, and the kernel then keeps the submitter from tracing it). The worker serves that
identity's listings until it has been idle for IDLE_SECONDS; a change of the user's groups is
another identity, so another worker. The helper imports only the standard library, talks only
over the socket it inherited (nobody else can reach it) and exits when the daemon closes its end.

A request is one JSON message {"uid", "gid", "groups", "path", "timeout"} with one file
descriptor; the answer written there is b"<length>\\n" and the listing, REFUSED when the
submitter cannot read every part of the Lab (missing and unreadable look the same), or
NOT_A_FILE with the path and kind of the first entry that is neither a file nor a directory
(a FIFO, a socket, a device: the copy and the loader would refuse it, or wait on it)."""

import errno
import json
import os
import signal
import socket
import stat
import sys
from collections import OrderedDict

# An idle worker ends after this long; beyond MAX_WORKERS identities, the least recently used ends.
IDLE_SECONDS = 60
MAX_WORKERS = 256
# The answer when the submitter cannot read it all. No answer at all (the reply socket closed
# empty) means the worker died before answering, and the daemon asks again.
REFUSED = b"refused\n"
NOT_A_FILE = b"not-a-file\n"
KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


class NotAFile(OSError):
    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, kind, path)


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
        if not (directory or stat.S_ISREG(st.st_mode)):
            raise NotAFile(path, KINDS.get(stat.S_IFMT(st.st_mode), "special file"))
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


def become(uid: int, gid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.chdir("/")


def answer(path: str, timeout: int, reply: int) -> None:
    """Write the answer for `path` to `reply` (in a worker: as the submitter)."""
    signal.alarm(timeout)  # a listing that hangs (a stuck mount) ends the worker, and so the request
    try:
        found = listing(path)
        out = memoryview(b"%d\n" % len(found) + found)
    except NotAFile as exc:
        out = memoryview(b"%s%s\0%s" % (NOT_A_FILE, os.fsencode(exc.filename), exc.strerror.encode()))
    except (OSError, RecursionError):
        out = memoryview(REFUSED)
    finally:
        signal.alarm(0)
    try:
        while out:
            out = out[os.write(reply, out):]
    except OSError:
        pass  # the daemon stopped waiting


def work(channel: socket.socket) -> None:
    """A worker's loop: requests from the helper until it closes the channel or we idle out."""
    channel.settimeout(IDLE_SECONDS)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, 1 << 20, 1)
        except TimeoutError:
            return
        if not message:
            return
        if fds:
            asked = json.loads(message)
            answer(asked["path"], int(asked["timeout"]), fds[0])
        for fd in fds:
            os.close(fd)


def start_worker(uid: int, gid: int, groups: list[int]) -> socket.socket:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:
        try:
            # Only its channel stays open: a copy of another worker's channel or of a pending reply
            # would keep that one from ever seeing its end.
            keep = theirs.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            become(uid, gid, groups)
            work(theirs)
        finally:
            os._exit(0)
    theirs.close()
    ours.setblocking(False)  # a worker that stopped reading is replaced, never waited for
    return ours


def reap(_signum, _frame) -> None:
    """Collect finished workers (rather than SIG_IGN: their CPU time then counts as ours)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def serve(control: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the daemon's to act on; EOF ends us
    signal.signal(signal.SIGCHLD, reap)
    workers: OrderedDict[tuple, socket.socket] = OrderedDict()
    while True:
        message, fds, _flags, _address = socket.recv_fds(control, 1 << 20, 1)
        if not message:
            return  # the daemon closed its end (or is gone)
        if not fds:
            continue
        try:
            asked = json.loads(message)
            who = (int(asked["uid"]), int(asked["gid"]), tuple(int(g) for g in asked["groups"]))
            for fresh in (False, True):  # an idled-out, killed or stuck worker is replaced, once
                if fresh or who not in workers:
                    if who in workers:
                        workers.pop(who).close()
                    workers[who] = start_worker(who[0], who[1], list(who[2]))
                workers.move_to_end(who)
                try:
                    socket.send_fds(workers[who], [message], fds)
                    break
                except OSError:
                    continue
            while len(workers) > MAX_WORKERS:
                workers.popitem(last=False)[1].close()  # it sees the end of its channel and exits
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a malformed request or no worker: no answer, the daemon reads a refusal
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
