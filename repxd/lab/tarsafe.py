"""Extracting tars we did not write (tar Labs, image layers) without trusting them.

Python's extraction filters (`extractall(filter=...)`) arrived in 3.11.4; Debian 12's system Python
is 3.11.2, and the system tier and NixOS run that. So the checks that matter are ours and run on
every version; the `tar` filter is added on top where the interpreter has it."""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path, PurePosixPath

HAS_FILTERS = hasattr(tarfile, "tar_filter")


def unsafe_reason(member: tarfile.TarInfo, symlinks: set[PurePosixPath], *,
                  absolute_symlinks: bool = False) -> str | None:
    """Why extracting `member` could write outside the destination, or None. `symlinks` holds the
    names of the tar's symbolic links: a member beneath one would be written through it. An image
    layer may hold absolute symlinks (they point into the container's root when it runs)."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        return "escapes the destination (absolute or '..')"
    if any(parent in symlinks for parent in name.parents):
        return "lies beneath a symbolic link of the same tar"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if member.issym() and target.is_absolute() and absolute_symlinks:
            return None
        resolved = target if member.islnk() else name.parent / target
        if target.is_absolute() or _escapes(resolved):
            return f"links to {member.linkname!r}, outside the Lab or image"
    return None


def symlink_names(members: list[tarfile.TarInfo]) -> set[PurePosixPath]:
    return {PurePosixPath(m.name) for m in members if m.issym()}


def extract(tf: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """Extract already-checked `members`: no set-id or sticky bits, nothing group- or
    world-writable, and owned by whoever extracts (a root extractor does not chown to the tar's ids)."""
    uid, gid = os.getuid(), os.getgid()
    root = os.path.realpath(dest)
    inside: dict[str, bool] = {}
    tame = []
    for m in members:
        # What earlier extractions left (an image's lower layer) may hold symlinks leading out.
        parent = os.path.dirname(m.name)
        if parent not in inside:
            real = os.path.realpath(os.path.join(dest, parent))
            inside[parent] = real == root or real.startswith(root + os.sep)
        if not inside[parent]:
            raise tarfile.ExtractError(f"{m.name!r} would be written through a link leading outside {dest}")
        m = copy.copy(m)
        m.mode &= 0o755
        m.uid, m.gid, m.uname, m.gname = uid, gid, "", ""
        tame.append(m)
    if HAS_FILTERS:
        tf.extractall(dest, members=tame, filter="tar")
    else:
        tf.extractall(dest, members=tame)


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False
