"""Unpacking tar Labs: every member checked (tarsafe.py) and bounded before anything is written,
the tree keyed by the tar's content."""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import threading
import zlib
from pathlib import Path, PurePosixPath

from ..errors import LabError
from . import tarsafe
from .lab_paths import MANIFEST_SUFFIX
from .verification import sha256_of

# What reading a damaged (possibly compressed) tar can raise besides TarError.
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)

# Bounds on what a tar may unpack to (a gzip bomb, a tar of countless empty files).
MAX_TAR_MEMBERS = 1_000_000
MAX_TAR_BYTES = 64 << 30


def unpack_tar_lab(tar_path: Path, unpack_dir: Path) -> Path:
    """Unpack a tar Lab after checking every member; returns the Lab root inside `unpack_dir`.

    The tree is keyed by the tar's content (its SHA-256), never by its name, size or mtime: a
    different tar never reuses or changes another's tree. It is unpacked into a temporary
    directory and renamed into place, so a tree under its key is always complete."""
    with _open_tar(tar_path) as tf:
        members = _checked_members(tf, tar_path)
        prefix = _tar_prefix(members, tar_path)
        dest = unpack_dir / f"{tar_path.name.split('.')[0]}-{sha256_of(tar_path)[:32]}"
        if not dest.is_dir():
            unpack_dir.mkdir(parents=True, exist_ok=True)
            # Per thread too: the daemon unpacks the same content for several submitters at once.
            tmp = unpack_dir / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.repx-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tarsafe.extract(tf, tmp, members)
                os.rename(tmp, dest)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if dest.is_dir():  # a concurrent unpack of the same content won the rename
                    return dest / prefix if prefix else dest
                raise LabError(f"{tar_path} could not be unpacked into {dest} ({_one_line(exc)}); copy or rebuild the tar, or free space there") from None
            except TAR_ERRORS as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise LabError(f"{tar_path} could not be unpacked into {dest} ({_one_line(exc)}); copy or rebuild the tar, or free space there") from None
            except KeyError as exc:  # tarfile: a hard link to a file that is not in the tar
                shutil.rmtree(tmp, ignore_errors=True)
                raise LabError(f"{tar_path} could not be unpacked: {exc.args[0]} (a hard link names a file missing from the tar); copy or rebuild the tar") from None
    return dest / prefix if prefix else dest


def _checked_members(tf: tarfile.TarFile, tar_path: Path) -> list[tarfile.TarInfo]:
    """Every member, checked, within MAX_TAR_MEMBERS and MAX_TAR_BYTES (read before unpacking)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        for m in tf:
            members.append(m)
            total += m.size if m.isfile() else 0
            if len(members) > MAX_TAR_MEMBERS:
                raise LabError(f"{tar_path} has more than {MAX_TAR_MEMBERS} members; a Lab tar this large is refused")
            if total > MAX_TAR_BYTES:
                raise LabError(f"{tar_path} unpacks to more than {MAX_TAR_BYTES >> 30} GiB; a Lab tar this large is refused")
    except TAR_ERRORS as exc:
        raise LabError(f"{tar_path} is truncated or corrupted ({_one_line(exc)}); copy or rebuild the tar") from None
    symlinks = tarsafe.symlink_names(members)
    for m in members:
        _check_tar_member(m, tar_path, symlinks)
    return members


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path)
    except tarfile.ReadError:
        raise LabError(f"{tar_path} is neither a Lab directory nor a readable tar (not a tar, tar.gz, tar.bz2 or tar.xz file)") from None
    except TAR_ERRORS as exc:
        raise LabError(f"{tar_path} is neither a Lab directory nor a readable tar ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _tar_prefix(members: list[tarfile.TarInfo], tar_path: Path) -> str:
    for m in members:
        parts = PurePosixPath(m.name).parts
        if parts and parts[0] == ".":
            parts = parts[1:]
        if "lab" in parts and parts[-1].endswith(MANIFEST_SUFFIX):
            idx = parts.index("lab")
            return "/".join(parts[:idx])
    raise LabError(f"{tar_path} contains no lab/*{MANIFEST_SUFFIX}; it is not a tar of a Lab")


def _check_tar_member(m: tarfile.TarInfo, tar_path: Path, symlinks: set[PurePosixPath]) -> None:
    reason = tarsafe.unsafe_reason(m, symlinks)
    if reason is not None:
        what = "link" if m.issym() or m.islnk() else "member"
        raise LabError(f"{tar_path}: {what} {m.name!r} {reason}; refusing to unpack this Lab")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise LabError(f"{tar_path}: member {m.name!r} is a device or fifo; Labs contain only files, directories and links")
