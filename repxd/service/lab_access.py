"""A socket submission's Lab is opened only if its submitter could read all of it themselves.

A root daemon can read anything, and `os.access` answers for the daemon, not the submitter. So
the check runs `find` as the submitter (their uid, gid and groups, as the subprocess launcher
starts jobs): it walks the Lab following links, as the Lab's loader does, and names the first
entry the submitter cannot read or search. Missing and unreadable give the same answer, so the
error reveals nothing about paths the submitter cannot see."""

from __future__ import annotations

import os
import subprocess

from ..errors import LabError
from ..exec.launcher import user_identity

FIND = "/usr/bin/find"
CHECK_TIMEOUT_SECONDS = 120


def require_readable_by(path: str, uid: int, user: str) -> None:
    """Raise LabError unless `uid` can read the Lab at `path`. Only a root daemon can (and needs
    to) check: an unprivileged daemon reads no more than its own user may."""
    if os.geteuid() != 0 or uid == 0:
        return
    who = user_identity(uid)
    unreadable = r"( -type d ( ! -readable -o ! -executable ) ) -o ( ! -type d ! -readable )"
    try:
        done = subprocess.run([FIND, "-L", "--", os.path.abspath(path), *unreadable.split(), "-print", "-quit"],
                              user=who.uid, group=who.gid, extra_groups=list(who.groups), cwd="/",
                              capture_output=True, timeout=CHECK_TIMEOUT_SECONDS, env={"PATH": "/usr/bin:/bin"})
        readable = done.returncode == 0 and not done.stdout
    except subprocess.TimeoutExpired:
        readable = False
    if not readable:
        raise LabError(f"Lab not found or not readable by {user}: {path} (pass a Lab directory or .tar that you can read)")
