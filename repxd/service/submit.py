"""Turning a submission (Lab, selection, target) into a run with its planned jobs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.embedded import base_path_for, inter_run_order, open_lab, resolve_target
from ..exec.layout import OutputLayout
from ..hardware.request import gpu_request
from ..lab.graph import Outcome, closure, select, topological_order
from ..lab.model import Lab
from ..store.queries import PlannedJob
from ..store.records import RunRecord
from ..user_config import parse_memory
from .daemon_config import Settings
from .lab_access import lab_as_submitter

# Loaded (and verified) Labs by where they are and what their files are: loading and verifying
# the Lab on every submit made a 10-job submit take 1.6 s at 200 clients. A large Lab holds
# hundreds of MB, so few are kept: at most LAB_CACHE_ENTRIES, and beyond LAB_CACHE_JOBS jobs in
# all only the newest. The agent of `repxd all` takes its Labs from here too (one copy in memory).
LAB_CACHE_ENTRIES = 4
LAB_CACHE_JOBS = 150_000
# With each Lab, its plans: a selection on a target gives the same jobs, dependencies and
# resources every time (the daemon's resource rules do not change while it runs), so only which
# jobs are done already is looked up on every submit. Planning them again was a third of a
# 10-job submit's planning. A few per Lab, and none of more than PLAN_CACHE_JOBS jobs.
PLAN_CACHE_ENTRIES = 32
PLAN_CACHE_JOBS = 10_000


@dataclass(slots=True)
class StaticJob:
    """What a plan says of a job whatever is done already."""
    job_id: str
    deps: list[tuple[str, bool]]
    cpus: int
    mem: int
    gpus: int
    gpu_optional: bool


@dataclass(slots=True)
class CachedLab:
    lab: Lab
    verified: bool
    plans: dict[tuple, tuple[Settings, list[StaticJob]]] = field(default_factory=dict)  # (selection, target) -> plan


_lab_cache: OrderedDict[tuple[str, object], CachedLab] = OrderedDict()
_lab_cache_lock = threading.Lock()


def lab_identity(path: Path) -> bytes:
    """A digest of the Lab's files as (path, dev, inode, size, mtime, ctime): the tar, or everything
    under a Lab directory. ctime moves on any change to a file, even one that puts its mtime back.
    A digest, not the tuples: for a 100,000-job Lab they were 400,000 tuples (~150 MB) per key."""
    digest = hashlib.blake2b(digest_size=32)

    def add(p: str) -> None:
        st = os.stat(p)
        digest.update(f"{p}\0{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode(errors="surrogateescape"))
    path = path.resolve()
    add(str(path))
    if path.is_dir():
        for top, dirs, files in os.walk(path, followlinks=True):
            for name in (*dirs, *files):
                add(os.path.join(top, name))
    return digest.digest()


def open_lab_cached(lab_path: Path, base: Path, verify: bool, content_keyed: bool = False) -> Lab:
    """The Lab at `lab_path`, loaded again only when one of its files changed (or it is new); a
    verified copy also serves an unverified load. `content_keyed`: the path names its content
    (the daemon's unpacked copy, lab-<sha256>), so walking its files to tell would be wasted."""
    return _cached_lab(lab_path, base, verify, content_keyed).lab


def _cached_lab(lab_path: Path, base: Path, verify: bool, content_keyed: bool) -> CachedLab:
    try:
        key = (str(base), ("unpacked", str(lab_path)) if content_keyed else lab_identity(lab_path))
    except OSError:
        return CachedLab(open_lab(lab_path, base, verify=verify), verify)  # the loader names what is missing
    with _lab_cache_lock:
        if (known := _lab_cache.get(key)) is not None and (known.verified or not verify):
            _lab_cache.move_to_end(key)
            return known
    entry = CachedLab(open_lab(lab_path, base, verify=verify), verify)
    with _lab_cache_lock:
        _lab_cache[key] = entry
        _lab_cache.move_to_end(key)
        while len(_lab_cache) > 1 and (len(_lab_cache) > LAB_CACHE_ENTRIES
                                        or sum(len(cached.lab.jobs) for cached in _lab_cache.values()) > LAB_CACHE_JOBS):
            _lab_cache.popitem(last=False)
    return entry


# A submission's target worked out once per name and daemon (the settings do not change while it
# runs): redoing it, base path resolved, on every submit was a tenth of planning a 10-job run.
_targets: dict[str | None, tuple[Settings, str, Path, OutputLayout]] = {}


def _target(settings: Settings, target: str | None) -> tuple[str, Path, OutputLayout]:
    """The target's name, its base path and that base path's layout."""
    if (known := _targets.get(target)) is not None and known[0] is settings:
        return known[1:]
    target_name, target_cfg = resolve_target(settings.target_config(), target)  # raises for an unknown name: not kept
    base = base_path_for(target_cfg, None, target_name) if target_cfg else settings.state_dir / "work"
    if target_cfg is not None and target_cfg.address:  # the daemon's copy of an SSH target, in its state
        base = settings.state_dir / "targets" / target_name
    _targets[target] = known = (settings, target_name, base, OutputLayout(base))
    return known[1:]


def _static_plan(settings: Settings, cached: CachedLab, selection: list[str], target_name: str) -> list[StaticJob]:
    """The selection's jobs with their closure, dependencies first, in the Lab's order (placement
    is FIFO by position). Raises LabError for a selection naming nothing in the Lab."""
    key = (tuple(selection), target_name)
    if (known := cached.plans.get(key)) is not None and known[0] is settings:
        return known[1]
    lab = cached.lab
    needed = closure(lab, select(lab, selection))
    after = inter_run_order(lab, needed)
    plan = []
    for job_id in topological_order(lab, needed):
        job = lab.jobs[job_id]
        res = settings.resources.for_job(job_id, job.resource_hints, target_name)
        edges = {d: d in job.soft_deps for d in job.deps if d in needed}
        edges.update({d: soft for d, soft in after.get(job_id, {}).items() if d in needed and d not in edges})
        gpus = gpu_request(res)
        plan.append(StaticJob(job_id, sorted(edges.items()), int(res.get("cpus-per-task") or 1),
                              parse_memory(res["mem"]) if res.get("mem") else 0, gpus.count, gpus.optional))
    if len(plan) <= PLAN_CACHE_JOBS:
        with _lab_cache_lock:
            while len(cached.plans) >= PLAN_CACHE_ENTRIES:
                cached.plans.pop(next(iter(cached.plans)))
            cached.plans[key] = (settings, plan)
    return plan


def plan_submission(settings: Settings, lab_path: str, selection: list[str], target: str | None,
                    options: dict, uid: int, user: str, *, read_as_submitter: bool = False) -> tuple[RunRecord, list[PlannedJob]]:
    """Load the Lab, resolve the selection and its closure against the target's base path.
    `read_as_submitter`: the Lab is read as `uid` could read it (lab_access). Raises RepxError
    subclasses for anything the submitter must fix."""
    target_name, base, layout = _target(settings, target)
    copied = False
    if read_as_submitter:
        options = {**options, "submitted_lab": os.path.abspath(lab_path)}
        lab_path = lab_as_submitter(lab_path, uid, user, layout.cache)
        # lab_access's own copy (unpacked under cache/labs), not the submitted path read as it is
        copied = os.path.abspath(lab_path) != options["submitted_lab"] and Path(lab_path).is_relative_to(layout.cache / "labs")
    cached = _cached_lab(Path(lab_path), base, not options.get("no_verify", False), copied)
    lab = cached.lab
    plan = _static_plan(settings, cached, selection, target_name)
    done = layout.outcomes(job.job_id for job in plan)
    jobs = [PlannedJob(job.job_id, job.deps, job.cpus, job.mem, done.get(job.job_id) is Outcome.OK, job.gpus, job.gpu_optional)
            for job in plan]
    run = RunRecord(id=uuid.uuid4().hex[:12], lab_path=str(lab.root), lab_id=lab.lab_id, selection=selection,
                    target=target_name, base_path=str(base), options=options, submitter_uid=uid,
                    submitter_name=user, state="active", created=time.time(), finished=None)
    return run, jobs
