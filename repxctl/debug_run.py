"""repxctl debug-run: one job run in the foreground with its inputs, as upstream's `repx debug-run`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from repxd.engine.embedded import EmbeddedRun, ExecutionOptions, plan_run
from repxd.user_config import load_resources

from .common import default_resources, lab_options, open_session
from .complete import complete_jobs
from .inspect import one_job
from .render import PlainReporter

# Upstream's debug runner keeps the outputs of the job and of what it needs in ./.repx-cache.
JOB_CACHE = Path(".repx-cache")


@click.command("debug-run")
@click.argument("job", shell_complete=complete_jobs)
@lab_options
def debug_run(job, lab_path, base_path, target, config_path, no_verify) -> None:
    """Run JOB (an id or a unique prefix) in this process, after the jobs whose outputs it reads,
    one at a time; then print its stdout and stderr logs and where its outputs are.

    Outputs go to ./.repx-cache (upstream's job cache) unless --base-path is given; jobs that
    already succeeded there are not run again. Always runs here, never through SLURM or the
    daemon. Exit status: 0 when JOB succeeded, 1 when it or a job it needs failed, 2 for a
    usage, config or Lab error."""
    session = open_session(lab_path, base_path or JOB_CACHE, target, config_path, no_verify)
    job_id = one_job(session.lab, job)
    here = session.target.model_copy(update={"default_scheduler": "local"}) if session.target else None
    plan = plan_run(session.lab, session.layout.base, [job_id], session.target_name, here)
    ok = True
    if plan.to_run:
        click.echo(f"Running {len(plan.to_run)} jobs in this process (outputs under {plan.layout.outputs}).", err=True)
        embedded = EmbeddedRun(plan, ExecutionOptions(concurrency=1, resources=load_resources(default_resources())),
                               PlainReporter(len(plan.to_run), plan.layout.repx_dir))
        embedded.prepare()
        summary = asyncio.run(embedded.run())
        ok = job_id in summary.succeeded
    else:
        click.echo(f"Job {job_id} has succeeded under {plan.layout.base} already; showing its logs.", err=True)
    repx = plan.layout.repx_dir(job_id)
    for name, to_stderr in (("stdout.log", False), ("stderr.log", True)):
        log = repx / name
        if log.exists() and log.stat().st_size:
            click.echo(f"--- {name} of {job_id}", err=True)
            click.echo(log.read_bytes(), nl=False, err=to_stderr)
    if not ok:
        click.echo(f"repxctl: job {job_id} did not succeed (see above; its files are in {repx.parent})", err=True)
        sys.exit(1)
    click.echo(f"Outputs of {job_id}: {repx.parent / 'out'}")
