"""Turning a submission (Lab, selection, target) into a run with its planned jobs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from ..engine.embedded import base_path_for, inter_run_order, open_lab, plan_run, resolve_target
from ..exec.layout import OutputLayout
from ..hardware.request import gpu_request
from ..lab.graph import Outcome, topological_order
from ..lab.model import Lab
from ..store.queries import PlannedJob
from ..store.records import RunRecord
from ..user_config import TargetConfig, parse_memory
from .daemon_config import Settings
from .lab_access import lab_as_submitter

# Loaded (and verified) Labs by where they are and what their files are: loading and verifying
# the Lab on every submit made a 10-job submit take 1.6 s at 200 clients. A large Lab holds
# hundreds of MB, so few are kept: at most LAB_CACHE_ENTRIES, and beyond LAB_CACHE_JOBS jobs in
# all only the newest. The agent of `repxd all` takes its Labs from here too (one copy in memory).
LAB_CACHE_ENTRIES = 4
LAB_CACHE_JOBS = 150_000
_lab_cache: OrderedDict[tuple[str, object], tuple[Lab, bool]] = OrderedDict()  # key -> (Lab, verified)
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
    try:
        key = (str(base), ("unpacked", str(lab_path)) if content_keyed else lab_identity(lab_path))
    except OSError:
        return open_lab(lab_path, base, verify=verify)  # the loader names what is missing
    with _lab_cache_lock:
        if (known := _lab_cache.get(key)) is not None and (known[1] or not verify):
            _lab_cache.move_to_end(key)
            return known[0]
    lab = open_lab(lab_path, base, verify=verify)
    with _lab_cache_lock:
        _lab_cache[key] = (lab, verify)
        _lab_cache.move_to_end(key)
        while len(_lab_cache) > 1 and (len(_lab_cache) > LAB_CACHE_ENTRIES
                                        or sum(len(entry.jobs) for entry, _ in _lab_cache.values()) > LAB_CACHE_JOBS):
            _lab_cache.popitem(last=False)
    return lab


# A submission's target worked out once per name and daemon (the settings do not change while it
# runs): redoing it, base path resolved, on every submit was a tenth of planning a 10-job run.
_targets: dict[str | None, tuple[Settings, str, TargetConfig | None, Path, Path]] = {}


def _target(settings: Settings, target: str | None) -> tuple[str, TargetConfig | None, Path, Path]:
    """The target's name and configuration, its base path and that base path's cache."""
    if (known := _targets.get(target)) is not None and known[0] is settings:
        return known[1:]
    target_name, target_cfg = resolve_target(settings.target_config(), target)  # raises for an unknown name: not kept
    base = base_path_for(target_cfg, None, target_name) if target_cfg else settings.state_dir / "work"
    if target_cfg is not None and target_cfg.address:  # the daemon's copy of an SSH target, in its state
        base = settings.state_dir / "targets" / target_name
    _targets[target] = known = (settings, target_name, target_cfg, base, OutputLayout(base).cache)
    return known[1:]


def plan_submission(settings: Settings, lab_path: str, selection: list[str], target: str | None,
                    options: dict, uid: int, user: str, *, read_as_submitter: bool = False) -> tuple[RunRecord, list[PlannedJob]]:
    """Load the Lab, resolve the selection and its closure against the target's base path.
    `read_as_submitter`: the Lab is read as `uid` could read it (lab_access). Raises RepxError
    subclasses for anything the submitter must fix."""
    target_name, target_cfg, base, cache = _target(settings, target)
    copied = False
    if read_as_submitter:
        options = {**options, "submitted_lab": os.path.abspath(lab_path)}
        lab_path = lab_as_submitter(lab_path, uid, user, cache)
        # lab_access's own copy (unpacked under cache/labs), not the submitted path read as it is
        copied = os.path.abspath(lab_path) != options["submitted_lab"] and Path(lab_path).is_relative_to(cache / "labs")
    lab = open_lab_cached(Path(lab_path), base, verify=not options.get("no_verify", False), content_keyed=copied)
    plan = plan_run(lab, base, selection, target_name, target_cfg)
    after = inter_run_order(lab, plan.closure)
    jobs = []
    for job_id in plan.closure:
        job = lab.jobs[job_id]
        res = settings.resources.for_job(job_id, job.resource_hints, target_name)
        edges = {d: d in job.soft_deps for d in job.deps if d in plan.closure}
        edges.update({d: soft for d, soft in after.get(job_id, {}).items() if d in plan.closure and d not in edges})
        deps = sorted(edges.items())
        gpus = gpu_request(res)
        jobs.append(PlannedJob(job_id, deps, int(res.get("cpus-per-task") or 1),
                               parse_memory(res["mem"]) if res.get("mem") else 0,
                               plan.outcomes.get(job_id) is Outcome.OK, gpus.count, gpus.optional))
    # Placement is FIFO by position: dependencies first, in the Lab's order.
    topo = {j: i for i, j in enumerate(topological_order(lab, plan.closure))}
    jobs.sort(key=lambda j: topo[j.job_id])
    run = RunRecord(id=uuid.uuid4().hex[:12], lab_path=str(lab.root), lab_id=lab.lab_id, selection=selection,
                    target=target_name, base_path=str(base), options=options, submitter_uid=uid,
                    submitter_name=user, state="active", created=time.time(), finished=None)
    return run, jobs
