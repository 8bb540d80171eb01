"""A Lab job to its SUCCESS or FAIL marker, whichever kind it is: one process (`job`), or a
scatter-gather stage of many (`scatter`, built on `job`'s pieces)."""

from __future__ import annotations

from ..lab.model import Job
from .job import JobContext, JobResult, execute_single
from .scatter import execute_scatter_gather


async def execute_job(ctx: JobContext, job: Job) -> JobResult:
    """Run `job` to a SUCCESS or FAIL marker. Raises CancelledError/AdmissionClosed without
    writing any marker when the run stops before the job finishes."""
    if job.is_scatter_gather:
        return await execute_scatter_gather(ctx, job)
    return await execute_single(ctx, job)
