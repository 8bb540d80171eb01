"""A socket submission's Lab is read only as its submitter could read it themselves.

A root daemon can read anything, and `os.access` answers for the daemon, not the submitter.
Checking first and loading by path afterwards leaves a window: a submitter who controls a
directory on the path can swap it for a link to another user's Lab once the check passed (and
the agent reloads a run's Lab later). So the daemon never reads a submitter's Lab by path: a
child running as the submitter (their uid, gid and groups, as the subprocess launcher starts
jobs) streams the Lab out as one tar (links followed, as the loader follows them), and the
daemon unpacks that stream, with the loader's member checks, into its own cache. Whatever the
child read, the submitter could read; everything afterwards uses the daemon's copy.

Repeated submissions of an unchanged Lab reuse the copy: the child also lists the identity of
every file (device, inode, size, times) as the submitter sees it, and a copy is reused only for
the same submitter and the same listing. Missing and unreadable give the same answer, so the
error reveals nothing about paths the submitter cannot see."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import LabError
from ..exec.launcher import user_identity
from ..lab.loader import MAX_TAR_BYTES, unpack_tar_lab

READ_TIMEOUT_SECONDS = 600
SHELL_PATH = "/usr/bin:/bin"
# As the submitter: the identity of every file under the Lab, links followed; then, on request,
# the Lab itself as a tar on stdout. A Lab given as a file (a tar Lab) is streamed as it is.
# (find itself, no shell in front: this runs on every submission, and a process start is most of its cost)
LIST = ["find", "-L", "{path}", "-printf", "%p %D %i %s %T@ %C@ %y\\n"]
STREAM = ('if [ -d "$1" ]; then exec tar --create --dereference --sparse --file=- --directory="$1" .; '
          'else exec cat -- "$1"; fi')


def _as(uid: int, script: str | list[str], path: str, **popen) -> subprocess.Popen:
    """`script` (a shell script, or an argv with {path}) run as `uid`, on `path` (absolute: no option)."""
    who = user_identity(uid)
    argv = [path if arg == "{path}" else arg for arg in script] if isinstance(script, list) else ["/bin/sh", "-c", script, "sh", path]
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
    lister = _as(uid, LIST, path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        listing, _ = lister.communicate(timeout=READ_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        lister.kill()
        lister.wait()
        raise _refuse(path, user) from None
    if lister.returncode != 0 or not listing:
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
