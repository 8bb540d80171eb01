"""Turning a submission (Lab, selection, target) into a run with its planned jobs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from ..config import parse_memory
from ..engine.embedded import base_path_for, inter_run_order, open_lab, plan_run, resolve_target
from ..hardware.request import gpu_request
from ..lab.graph import Outcome, topological_order
from ..store.queries import PlannedJob
from ..store.records import RunRecord
from .settings import Settings


def plan_submission(settings: Settings, lab_path: str, selection: list[str], target: str | None,
                    options: dict, uid: int, user: str) -> tuple[RunRecord, list[PlannedJob]]:
    """Load the Lab, resolve the selection and its closure against the target's base path.
    Raises RepxError subclasses for anything the submitter must fix."""
    config = settings.target_config()
    target_name, target_cfg = resolve_target(config, target)
    base = base_path_for(target_cfg, None) if target_cfg else settings.state_dir / "work"
    lab = open_lab(Path(lab_path), base, verify=not options.get("no_verify", False))
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
