"""Selecting jobs and reasoning about the DAG: selectors, closures, topological order, status."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping

from ..errors import SelectionError
from .model import Lab


class JobStatus(enum.StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    QUEUED = "Queued"
    RUNNING = "Running"
    PENDING = "Pending"
    BLOCKED = "Blocked"


class Outcome(enum.StrEnum):
    """What the filesystem evidence says about a job (markers / completions.jsonl)."""

    OK = "ok"
    FAIL = "fail"


def matching_jobs(lab: Lab, prefix: str) -> list[str]:
    """The job named `prefix` exactly, else every job whose id starts with it."""
    if prefix in lab.jobs:
        return [prefix]
    return [j for j in lab.jobs if prefix and j.startswith(prefix)]


def select(lab: Lab, specs: Iterable[str]) -> list[str]:
    """Resolve selectors to job ids: a run name, `@group`, or a job-id prefix (unique)."""
    chosen: dict[str, None] = {}
    specs = list(specs)
    if not specs:
        raise SelectionError("nothing selected: name a run, an @group or a job-id prefix (see `repxctl list runs`)")
    for spec in specs:
        for job_id in _select_one(lab, spec):
            chosen[job_id] = None
    return list(chosen)


def _select_one(lab: Lab, spec: str) -> list[str]:
    if spec.startswith("@"):
        group = spec[1:]
        if group not in lab.groups:
            known = ", ".join(f"@{g}" for g in sorted(lab.groups)) or "none"
            raise SelectionError(f"unknown group {spec!r}; this Lab's groups: {known}")
        return [j for run in lab.groups[group] for j in lab.runs[run].job_ids]
    if spec in lab.runs:
        return list(lab.runs[spec].job_ids)
    matches = matching_jobs(lab, spec)
    if len(matches) == 1:
        return matches
    if len(matches) > 1:
        shown = "\n  ".join(sorted(matches)[:10]) + ("\n  …" if len(matches) > 10 else "")
        raise SelectionError(f"job-id prefix {spec!r} is ambiguous; it matches {len(matches)} jobs:\n  {shown}")
    runs = ", ".join(sorted(lab.runs))
    raise SelectionError(f"{spec!r} is not a run, an @group or a job-id prefix of this Lab (runs: {runs})")


def closure(lab: Lab, job_ids: Iterable[str]) -> set[str]:
    """The jobs and everything they depend on, transitively."""
    seen: set[str] = set()
    stack = list(job_ids)
    while stack:
        job_id = stack.pop()
        if job_id in seen:
            continue
        seen.add(job_id)
        stack.extend(lab.jobs[job_id].deps)
    return seen


def topological_order(lab: Lab, job_ids: Iterable[str]) -> list[str]:
    """Dependencies first; ties in Lab order, so output is stable."""
    subset = set(job_ids)
    indegree = {j: sum(1 for d in lab.jobs[j].deps if d in subset) for j in subset}
    dependents: dict[str, list[str]] = {j: [] for j in subset}
    for j in subset:
        for d in lab.jobs[j].deps:
            if d in subset:
                dependents[d].append(j)
    order_index = {j: i for i, j in enumerate(lab.jobs)}
    queue = deque(sorted((j for j, n in indegree.items() if n == 0), key=order_index.__getitem__))
    order = []
    while queue:
        j = queue.popleft()
        order.append(j)
        for child in dependents[j]:
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    return order


def dependents_map(lab: Lab, job_ids: Iterable[str]) -> dict[str, list[str]]:
    subset = set(job_ids)
    result: dict[str, list[str]] = {j: [] for j in subset}
    for j in subset:
        for d in lab.jobs[j].deps:
            if d in subset:
                result[d].append(j)
    return result


def statuses(lab: Lab, job_ids: Iterable[str], outcomes: Mapping[str, Outcome],
             active: Mapping[str, JobStatus] | None = None) -> dict[str, JobStatus]:
    """Status of each job: evidence first (Succeeded/Failed), then the scheduler's view
    (Queued/Running), then Pending when every hard dependency succeeded, else Blocked."""
    active = active or {}
    result: dict[str, JobStatus] = {}
    for job_id in job_ids:
        outcome = outcomes.get(job_id)
        if job_id in active:
            result[job_id] = active[job_id]
        elif outcome is Outcome.OK:
            result[job_id] = JobStatus.SUCCEEDED
        elif outcome is Outcome.FAIL:
            result[job_id] = JobStatus.FAILED
        else:
            job = lab.jobs[job_id]
            ready = all(outcomes.get(d) is Outcome.OK for d in job.deps if d not in job.soft_deps)
            result[job_id] = JobStatus.PENDING if ready else JobStatus.BLOCKED
    return result
