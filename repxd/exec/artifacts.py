"""Putting the Lab under `<base>/artifacts/` (lab-format §6), where jobs and their inputs find it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ..errors import LabError
from ..lab.loader import sha256_of
from ..lab.model import Lab
from .layout import OutputLayout

# Content-addressed trees: an existing path that holds the same bytes is never rewritten.
_IMMUTABLE_TOPS = {"jobs", "images", "host-tools", "store"}


def sync_artifacts(lab: Lab, layout: OutputLayout) -> int:
    """Hard-link (or copy, across filesystems) the Lab's files into `artifacts/`; returns how many
    files were placed. A Lab already synced (by its id) costs one stat."""
    stamp = layout.artifacts / ".repx-labs" / lab.lab_id
    if stamp.exists():
        return 0
    placed = 0
    root = lab.root
    for dirpath, _dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        top = rel_dir.parts[0] if rel_dir.parts else ""
        dest_dir = layout.artifacts / rel_dir
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            src, dest = Path(dirpath) / name, dest_dir / name
            try:
                # A name not there yet (a fresh base path: every file): linked in one system
                # call, and a hard link is never seen half-written.
                os.link(src, dest)
                placed += 1
                continue
            except FileExistsError:
                if top in _IMMUTABLE_TOPS and _holds(dest, src, lab.manifest.digest_of(str(rel_dir / name))):
                    continue
            except OSError:
                pass  # another filesystem: copied
            _place(src, dest)
            placed += 1
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return placed


def _holds(dest: Path, src: Path, digest: str | None) -> bool:
    """Whether `dest` already holds this Lab's file. A name is no proof: another Lab (another
    user's, through a shared daemon) may have placed different bytes under it, and jobs read
    these files as inputs. The same inode, or the manifest's digest, is."""
    try:
        found = dest.stat()
    except FileNotFoundError:
        return False
    mine = src.stat()
    if (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino):
        return True
    if digest is None or found.st_size != mine.st_size:
        return False
    return sha256_of(dest) == digest


def _place(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.repx-tmp")  # concurrent syncs of one Lab
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp, follow_symlinks=True)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


CONTENT_DIR = ".repx-content"


def verified_executable(lab: Lab, layout: OutputLayout, rel: str) -> Path:
    """The Lab file `rel` as it runs: a copy under `artifacts/.repx-content/` named by the
    manifest's SHA-256 and written only after its bytes matched it. So a job runs what was
    verified, whatever another Lab placed at the same name or the Lab's owner changed since."""
    digest = lab.manifest.digest_of(rel)
    if digest is None:
        raise LabError(f"{rel} is not listed in the Lab's manifest; a job may only run files the manifest lists")
    dest = layout.artifacts / CONTENT_DIR / digest[:2] / f"{digest}-{Path(rel).name}"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.repx-tmp")
    hasher = hashlib.sha256()
    with open(lab.root / rel, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
            out.write(chunk)
    if hasher.hexdigest() != digest:
        tmp.unlink()
        raise LabError(f"{rel} in the Lab at {lab.root} no longer matches its manifest; it changed after it was verified")
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    return dest
