"""Putting the Lab under `<base>/artifacts/` (lab-format §6), where jobs and their inputs find it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..lab.model import Lab
from .layout import OutputLayout

# Content-addressed trees: an existing path holds the same bytes, so it is never rewritten.
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
            dest = dest_dir / name
            if top in _IMMUTABLE_TOPS and dest.exists():
                continue
            _place(Path(dirpath) / name, dest)
            placed += 1
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return placed


def _place(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.repx-tmp")  # concurrent syncs of one Lab
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp, follow_symlinks=True)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)
