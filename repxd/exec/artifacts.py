"""Putting the Lab under `<base>/artifacts/` (lab-format §6), where jobs and their inputs find it."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import LabError
from ..lab.model import Lab
from ..lab.verification import sha256_of
from .layout import OutputLayout

# Content-addressed trees: an existing path that holds the same bytes is never rewritten.
_IMMUTABLE_TOPS = {"jobs", "images", "host-tools", "store"}


def sync_artifacts(lab: Lab, layout: OutputLayout, job_ids: Iterable[str] | None = None) -> int:
    """Hard-link (or copy, across filesystems) the Lab's files into `artifacts/`; returns how many
    files were placed. With `job_ids` (a run's selection), of `jobs/` only those jobs' directories:
    a run then costs the jobs it runs, not the size of its Lab. A Lab already synced whole (by its
    id) costs one stat."""
    if synced(lab, layout):
        return 0
    return place_lab(lab, layout) + place_jobs(lab, layout, job_ids)


def synced(lab: Lab, layout: OutputLayout) -> bool:
    return _stamp(lab, layout).exists()


def _stamp(lab: Lab, layout: OutputLayout) -> Path:
    return layout.artifacts / ".repx-labs" / lab.lab_id


def place_lab(lab: Lab, layout: OutputLayout) -> int:
    """The Lab's files outside `jobs/`: what runtimes and job inputs read (images, host tools,
    the runs' metadata), so placed before any job starts."""
    root = str(lab.root)
    return _place_tree(lab, root, root, str(layout.artifacts), skip_jobs=True)


def place_jobs(lab: Lab, layout: OutputLayout, job_ids: Iterable[str] | None = None) -> int:
    """The directories under `jobs/` of `job_ids` (None: all of `jobs/`). Jobs run their scripts
    from verified copies (`verified_executable`), so this may go on while they run. Once all of
    the Lab's jobs are placed (with `place_lab` before), the Lab counts as synced."""
    root, artifacts = str(lab.root), str(layout.artifacts)
    whole = job_ids is None or not lab.jobs.keys() - set(job_ids)
    if whole:
        placed = _place_tree(lab, f"{root}/jobs", root, artifacts, skip_jobs=False)
        stamp = _stamp(lab, layout)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        return placed
    return sum(_place_tree(lab, f"{root}/jobs/{name}", root, artifacts, skip_jobs=False)
               for name in sorted(_job_dirs(lab, job_ids)))


def _job_dirs(lab: Lab, job_ids: Iterable[str]) -> set[str]:
    """The directories under the Lab's `jobs/` that hold these jobs' executables."""
    names = set()
    for job_id in job_ids:
        for executable in lab.jobs[job_id].executables.values():
            parts = executable.path.split("/")
            if len(parts) > 2 and parts[0] == "jobs":
                names.add(parts[1])
    # As in a walk of the whole Lab: a symbolic link to a directory is not followed.
    return {name for name in names if not os.path.islink(f"{lab.root}/jobs/{name}")}


def _place_tree(lab: Lab, tree: str, root: str, artifacts: str, *, skip_jobs: bool) -> int:
    """Place the files under `tree` (the Lab's root, or a directory in it); `skip_jobs`: not the
    Lab's `jobs/` (its selected directories are placed one by one)."""
    placed = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if skip_jobs and not rel_dir and "jobs" in dirnames:
            dirnames.remove("jobs")
            os.makedirs(f"{artifacts}/jobs", exist_ok=True)
        top = rel_dir.split("/", 1)[0]
        dest_dir = f"{artifacts}/{rel_dir}" if rel_dir else artifacts
        os.makedirs(dest_dir, exist_ok=True)
        for name in filenames:
            src, dest = f"{dirpath}/{name}", f"{dest_dir}/{name}"
            try:
                # A name not there yet (a fresh base path: every file): linked in one system
                # call, and a hard link is never seen half-written.
                os.link(src, dest)
                placed += 1
                continue
            except FileExistsError:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if top in _IMMUTABLE_TOPS and _holds(Path(dest), Path(src), lab.manifest.digest_of(rel)):
                    continue
            except OSError:
                pass  # another filesystem: copied
            _place(Path(src), Path(dest))
            placed += 1
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
    # A rename onto another link of the same file does nothing (POSIX), leaving the temporary.
    tmp.unlink(missing_ok=True)


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
