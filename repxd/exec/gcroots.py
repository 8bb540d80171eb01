"""GC roots: the Labs whose outputs `repxctl gc` keeps, recorded under `<base>/gcroots/`."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..lab.model import Lab
from .layout import OutputLayout, write_json_atomic


def roots_dir(layout: OutputLayout) -> Path:
    return layout.base / "gcroots"


def register_root(layout: OutputLayout, lab: Lab) -> None:
    """Record the Lab's job ids, so its outputs survive `gc` even if the Lab itself is deleted."""
    directory = roots_dir(layout)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / f"{lab.lab_id}.json",
                      {"lab_id": lab.lab_id, "lab": str(lab.root), "registered": time.time(), "jobs": sorted(lab.jobs)})


@dataclass
class Root:
    lab_id: str
    lab: str
    registered: float
    jobs: list[str]


def list_roots(layout: OutputLayout) -> list[Root]:
    roots = []
    directory = roots_dir(layout)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            roots.append(Root(data["lab_id"], data["lab"], data["registered"], list(data["jobs"])))
        except (ValueError, KeyError, TypeError):
            continue
    return roots


def drop_root(layout: OutputLayout, lab_id: str) -> bool:
    matches = list(roots_dir(layout).glob(f"{lab_id}*.json"))
    for path in matches:
        path.unlink()
    return bool(matches)


def garbage(layout: OutputLayout) -> list[Path]:
    """Output directories of jobs no root names."""
    live = {job for root in list_roots(layout) for job in root.jobs}
    if not layout.outputs.is_dir():
        return []
    return sorted(p for p in layout.outputs.iterdir() if p.is_dir() and p.name not in live)


def collect(paths: list[Path]) -> int:
    freed = 0
    for path in paths:
        freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(path)
    return freed
