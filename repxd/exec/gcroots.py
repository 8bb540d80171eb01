"""GC roots: the Labs whose outputs and artifacts `repxctl gc` keeps, laid out as upstream's:

    <base>/gcroots/auto/<project>/<timestamp>_<lab id>   one per `repxctl run`, last 5 per project
    <base>/gcroots/pinned/<name>                         made by `repxctl gc pin`, kept until unpinned

Upstream's entries are symlinks to a copy of the Lab's metadata in artifacts/lab/; ours are small
JSON records (the Lab's job ids and artifact entries), because our artifacts/ holds the union of
every Lab's files rather than one metadata file per Lab. Records of the earlier flat layout
(`gcroots/<lab id>.json`) are moved under auto/legacy/ the first time roots change."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..lab.model import Lab
from .layout import OutputLayout, write_json_atomic

AUTO_ROOTS_KEPT = 5  # per project, as upstream
# Content-addressed artifact trees, collected entry by entry (as upstream; bin/ etc. are never touched).
COLLECTED_TOPS = ("jobs", "images", "host-tools", "store")
LEGACY_PROJECT = "legacy"


@dataclass
class Root:
    lab_id: str
    lab: str
    registered: float
    jobs: list[str]
    artifacts: list[str] | None = None  # None: a record from before artifacts were tracked
    kind: str = "auto"
    name: str = ""
    project: str = ""
    path: str = field(default="", repr=False)


def roots_dir(layout: OutputLayout) -> Path:
    return layout.base / "gcroots"


def project_id(lab_path: Path) -> str:
    """Upstream names a project by its git remote and Lab path; we use the Lab path as given
    (./result stays the same project across rebuilds, though the store path it points to changes)."""
    return hashlib.sha256(str(Path(os.path.abspath(lab_path))).encode()).hexdigest()[:12]


def record_for(lab: Lab) -> dict:
    artifacts = sorted(f"{top}/{entry.name}" for top in COLLECTED_TOPS if (lab.root / top).is_dir()
                       for entry in (lab.root / top).iterdir())
    return {"lab_id": lab.lab_id, "lab": str(lab.root), "registered": time.time(), "jobs": sorted(lab.jobs),
            "artifacts": artifacts}


def register_root(layout: OutputLayout, lab: Lab, lab_path: Path | None = None) -> None:
    """Record the Lab's job ids and artifacts, so they survive `gc` even if the Lab itself is
    deleted; keep only the newest AUTO_ROOTS_KEPT roots of its project."""
    migrate_legacy(layout)
    project_dir = roots_dir(layout) / "auto" / project_id(lab_path or lab.root)
    project_dir.mkdir(parents=True, exist_ok=True)
    for old in project_dir.glob(f"*_{lab.lab_id}"):
        old.unlink()  # one root per Lab and project: the newest registration
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime())
    write_json_atomic(project_dir / f"{stamp}_{lab.lab_id}", record_for(lab))
    for stale in sorted(project_dir.iterdir())[:-AUTO_ROOTS_KEPT]:
        stale.unlink()


def pin(layout: OutputLayout, record: dict, name: str) -> Path:
    directory = roots_dir(layout) / "pinned"
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / name, record)  # pinning a name again replaces it, as upstream
    return directory / name


def migrate_legacy(layout: OutputLayout) -> None:
    directory = roots_dir(layout)
    legacy = list(directory.glob("*.json")) if directory.is_dir() else []
    if not legacy:
        return
    target = directory / "auto" / LEGACY_PROJECT
    target.mkdir(parents=True, exist_ok=True)
    for path in legacy:
        root = _read(path, "auto", LEGACY_PROJECT)
        if root is None:
            continue
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(root.registered))
        os.replace(path, target / f"{stamp}_{root.lab_id}")


def _read(path: Path, kind: str, project: str) -> Root | None:
    try:
        data = json.loads(path.read_text())
        return Root(data["lab_id"], data["lab"], data["registered"], list(data["jobs"]), data.get("artifacts"),
                    kind, path.name, project, str(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_roots(layout: OutputLayout) -> list[Root]:
    directory = roots_dir(layout)
    found: list[Root | None] = []
    if directory.is_dir():
        found += [_read(p, "auto", LEGACY_PROJECT) for p in sorted(directory.glob("*.json"))]
        auto = directory / "auto"
        for project in sorted(auto.iterdir()) if auto.is_dir() else []:
            found += [_read(p, "auto", project.name) for p in sorted(project.iterdir())]
        pinned = directory / "pinned"
        found += [_read(p, "pinned", "") for p in sorted(pinned.iterdir())] if pinned.is_dir() else []
    return [r for r in found if r is not None]


def root_dict(root: Root) -> dict:
    return asdict(root)


def drop_root(layout: OutputLayout, lab_id: str) -> bool:
    """Forget every root (auto and pinned) of the Lab `lab_id`."""
    matches = [Path(r.path) for r in list_roots(layout) if r.lab_id == lab_id]
    for path in matches:
        path.unlink()
    return bool(matches)


def drop_auto_roots(layout: OutputLayout) -> None:
    shutil.rmtree(roots_dir(layout) / "auto", ignore_errors=True)
    for path in roots_dir(layout).glob("*.json"):
        path.unlink()


def garbage(layout: OutputLayout, roots: list[Root] | None = None) -> list[Path]:
    """Output directories of jobs no root names."""
    roots = list_roots(layout) if roots is None else roots
    live = {job for root in roots for job in root.jobs}
    if not layout.outputs.is_dir():
        return []
    return sorted(p for p in layout.outputs.iterdir() if p.is_dir() and p.name not in live)


def garbage_artifacts(layout: OutputLayout, roots: list[Root] | None = None) -> list[Path]:
    """Entries of artifacts/{jobs,images,host-tools,store} no root names. None while any root is
    an older record that did not list its artifacts: what it needs is unknown, so all are kept."""
    roots = list_roots(layout) if roots is None else roots
    if any(r.artifacts is None for r in roots):
        return []
    live = {a for r in roots for a in r.artifacts or ()}
    return sorted(entry for top in COLLECTED_TOPS if (layout.artifacts / top).is_dir()
                  for entry in (layout.artifacts / top).iterdir() if f"{top}/{entry.name}" not in live)


def forget_synced_labs(layout: OutputLayout, roots: list[Root]) -> None:
    """After artifacts are deleted, a Lab without a root must be synced again on its next run."""
    stamps = layout.artifacts / ".repx-labs"
    live = {r.lab_id for r in roots}
    for stamp in stamps.iterdir() if stamps.is_dir() else []:
        if stamp.name not in live:
            stamp.unlink()


def size_of(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def forget_guards(layout: OutputLayout, job_ids: set[str]) -> int:
    """Delete the guards (lock and exit record, `layout.guard`) of the processes of these jobs'
    deleted output directories: there is one for every job directory ever run, so without this
    they outgrow the outputs they served. Returns how many files went."""
    removed = 0
    try:
        entries = list(os.scandir(layout.cache / "guards"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.split("%", 1)[0] in job_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def collect(paths: list[Path]) -> int:
    freed = 0
    for path in paths:
        freed += size_of(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return freed
