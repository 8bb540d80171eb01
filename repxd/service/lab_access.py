"""A socket submission's Lab is read only as its submitter could read it themselves.

A root daemon can read anything, and `os.access` answers for the daemon, not the submitter.
Checking first and loading by path afterwards leaves a window: a submitter who controls a
directory on the path can swap it for a link to another user's Lab once the check passed (and
the agent reloads a run's Lab later). So the daemon never reads a submitter's Lab by path: a
child running as the submitter (their uid, gid and groups, as the subprocess launcher starts
jobs) streams the Lab out as one tar (links followed, as the loader follows them), and the
daemon unpacks that stream, with the loader's member checks, into its own cache. Whatever the
child read, the submitter could read; everything afterwards uses the daemon's copy.

Repeated submissions of an unchanged Lab reuse the copy: on every submission a child running as
the submitter lists the identity of every file (device, inode, size, times, mode; each one must
be readable by them), and a copy is reused only for the same submitter and the same listing.
That child is forked from a small helper process (lister_helper), not from the daemon: forking
the daemon for it was 40% of a submit. Missing and unreadable give the same answer, so the
error reveals nothing about paths the submitter cannot see."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import LabError
from ..exec.launcher import user_identity
from ..lab.tar_lab import MAX_TAR_BYTES, unpack_tar_lab
from .lister_helper import NOT_A_FILE, REFUSED

READ_TIMEOUT_SECONDS = 600
SHELL_PATH = "/usr/bin:/bin"
# As the submitter, when the listing is new: the Lab as a tar on stdout. A Lab given as a file (a
# tar Lab) is streamed as it is.
STREAM = ('if [ -d "$1" ]; then exec tar --create --dereference --sparse --file=- --directory="$1" .; '
          'else exec cat -- "$1"; fi')


class Lister:
    """The daemon's end of lister_helper, started on first use (and again when a request to it fails)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._helper: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    def _start(self, again: bool = False) -> socket.socket:
        """The running helper's control socket; `again`: a fresh helper, the last one failed us."""
        with self._lock:
            if self._helper is not None and not again:
                return self._control  # a dead helper shows as a failed send (its end is closed)
            if self._helper is not None:
                self._helper.kill()
                self._helper.wait()
            if self._control is not None:
                self._control.close()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with theirs:
                # -I -S: the standard library only, no site-packages: a small process to fork.
                self._helper = subprocess.Popen([sys.executable, "-I", "-S", str(Path(__file__).with_name("lister_helper.py")),
                                                 str(theirs.fileno())], pass_fds=(theirs.fileno(),), cwd="/",
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self._control = ours
            return ours

    def listing(self, uid: int, path: str) -> bytes | None:
        """The listing of `path` as `uid` (with its gid and groups as of now), or None when
        `uid` cannot read all of it. LabError when it holds what no Lab may (a FIFO, a device)."""
        who = user_identity(uid)
        request = json.dumps({"uid": who.uid, "gid": who.gid, "groups": list(who.groups), "path": path,
                              "timeout": READ_TIMEOUT_SECONDS}).encode()
        for _ in range(2):  # no answer at all: the worker died (its user may kill it); ask a new one
            answer = self._ask(request)
            if answer:
                break
        length, _, found = answer.partition(b"\n")
        if length + b"\n" == NOT_A_FILE:
            where, _, kind = found.partition(b"\0")
            raise LabError(f"{os.fsdecode(where)} is a {kind.decode()}; a Lab holds only files, directories and links "
                           "to them: remove it from the Lab and submit again")
        return found if length.isdigit() and int(length) == len(found) > 0 else None

    def _ask(self, request: bytes) -> bytes:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            try:
                socket.send_fds(self._start(), [request], [theirs.fileno()])
            except OSError:  # the helper died: start another, once
                socket.send_fds(self._start(again=True), [request], [theirs.fileno()])
            theirs.close()  # the worker holds the only writer now: its answer or its end ends our read
            ours.settimeout(READ_TIMEOUT_SECONDS + 5)
            answer = bytearray()
            try:
                while chunk := ours.recv(1 << 20):
                    answer += chunk
            except TimeoutError:
                return REFUSED
        return bytes(answer)


_lister = Lister()


def _as(uid: int, script: str, path: str, **popen) -> subprocess.Popen:
    """The shell `script` run as `uid`, on `path` (absolute: no option)."""
    who = user_identity(uid)
    argv = ["/bin/sh", "-c", script, "sh", path]
    return subprocess.Popen(argv, user=who.uid, group=who.gid,
                            extra_groups=list(who.groups), cwd="/", env={"PATH": SHELL_PATH},
                            stdin=subprocess.DEVNULL, **popen)


def _refuse(path: str, user: str) -> LabError:
    return LabError(f"Lab not found or not readable by {user}: {path} (pass a Lab directory or .tar that you can read)")


def lab_as_submitter(path: str, uid: int, user: str, cache: Path) -> Path:
    """The Lab to load for a submission of `path` by `uid`: `path` itself when the daemon reads no
    more than the submitter (an unprivileged daemon, or root submitting), else the daemon's own
    copy of what the submitter can read there, under `cache`. Raises LabError when the submitter
    cannot read all of it."""
    if os.geteuid() != 0 or uid == 0:
        return Path(path)
    path = os.path.abspath(path)
    listing = _lister.listing(uid, path)
    if listing is None:
        raise _refuse(path, user)
    key = hashlib.sha256(listing).hexdigest()[:32]
    copies = cache / "submitted"
    copies.mkdir(mode=0o700, parents=True, exist_ok=True)
    pointer = copies / f"{uid}-{key}"
    try:
        known = Path(pointer.read_text())
        if known.is_dir():
            return known
    except OSError:
        pass
    root = _copy(path, uid, user, copies, cache / "labs")
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}")
    tmp.write_text(str(root))
    os.replace(tmp, pointer)
    return root


def _copy(path: str, uid: int, user: str, copies: Path, unpack_dir: Path) -> Path:
    """Stream the Lab as the submitter into a tar of the daemon's, unpack it, drop the tar."""
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=copies))
    tar = incoming / "lab.tar"  # the unpacked tree is named after it: lab-<sha256>
    try:
        streamer = _as(uid, STREAM, path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = threading.Timer(READ_TIMEOUT_SECONDS, streamer.kill)
        deadline.start()
        written = 0
        try:
            with open(tar, "wb") as sink:
                while chunk := streamer.stdout.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_TAR_BYTES:
                        streamer.kill()
                        raise LabError(f"{path}: the Lab is larger than {MAX_TAR_BYTES >> 30} GiB; a Lab this large is refused")
                    sink.write(chunk)
        except OSError as exc:
            streamer.kill()
            raise LabError(f"{path} could not be copied into {copies} ({exc.strerror}); free space there and submit again") from None
        finally:
            streamer.stdout.close()
            status = streamer.wait()
            deadline.cancel()
        # tar reports an unreadable entry (or one that changed while read) with a non-zero exit,
        # having skipped it: such a partial copy is never loaded.
        if status != 0:
            raise _refuse(path, user)
        return unpack_tar_lab(tar, unpack_dir)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
