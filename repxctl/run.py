"""repxctl run: execute a selection of a Lab (embedded engine)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from repxd.engine.embedded import EmbeddedRun, ExecutionOptions, plan_run
from repxd.errors import RepxError
from repxd.exec.gcroots import register_root
from repxd.exec.runtimes import RUNTIMES
from repxd.targets.schedulers import DISPLAY_NAMES
from repxd.user_config import load_resources

from . import daemon
from .common import MemorySize, default_resources, lab_options, open_session
from .complete import complete_specs
from .follow import follow_run, summary_message
from .render import PlainReporter


@click.command()
@click.argument("specs", nargs=-1, required=True, shell_complete=complete_specs)
@lab_options
@click.option("--resources", "resources_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=default_resources, help="resources.toml merged over the user's and ./resources.toml.")
@click.option("-j", "--jobs", "concurrency", type=click.IntRange(min=1), help="Jobs at once (default: the target's local_concurrency, else the CPU count).")
@click.option("--mem", type=MemorySize(), help="Memory to admit jobs against, e.g. 8G (default: the machine's RAM).")
@click.option("--continue-on-failure", is_flag=True, help="Keep launching independent jobs after a failure.")
@click.option("--runtime", type=click.Choice(RUNTIMES), help="Override the target's execution type for runs with an image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary instead of progress.")
@daemon.API_OPTION
@click.option("--embedded", is_flag=True, help="Run in this process even when a daemon is reachable.")
@click.option("--detach", is_flag=True, help="With a daemon: submit and return the run id without waiting.")
def run(specs, lab_path, base_path, target, config_path, no_verify, resources_path, concurrency, mem,
        continue_on_failure, runtime, as_json, api_address, embedded, detach) -> None:
    """Run SPECS (run names, @groups or job-id prefixes) and everything they depend on.

    Submits to the repx daemon when one is reachable (--api, $REPX_API or the default socket);
    otherwise, or with --embedded, runs in this process. --base-path, -j, --mem and --resources
    apply to runs in this process only: with a daemon they are refused (add --embedded). Jobs
    that already succeeded under the base path are not run again. Ctrl-C cancels the run.
    Exit status: 0 when every selected job succeeded, 1 when a job failed, 2 for a usage,
    config or Lab error, 128+N when stopped by signal N (130 for Ctrl-C)."""
    fallback_notice = None
    if not embedded:
        api = daemon.connect(api_address)
        if api.reachable():
            _refuse_embedded_only_options(api.address, base_path, concurrency, mem, resources_path)
            options = {"continue_on_failure": continue_on_failure, "runtime": runtime, "no_verify": no_verify}
            submitted = daemon.submit(api, lab_path, list(specs), target, options)
            if detach:
                click.echo(json.dumps(submitted, indent=2) if as_json else submitted["id"])
                return
            click.echo(f"Submitted run {submitted['id']} to the daemon at {api.address}.", err=True)
            follow_run(api, submitted["id"], as_json)
            return
        if api_address:
            raise RepxError(f"no repx daemon answers at {api_address}; start it, or pass --embedded")
        fallback_notice = f"repxctl: no repx daemon at {api.address}; running embedded."
    if detach:
        raise RepxError("--detach needs the repx daemon (it returns while the daemon runs the jobs); "
                        "start one (`repxd all`) or run in the foreground without --detach")
    session = open_session(lab_path, base_path, target, config_path, no_verify)
    plan = plan_run(session.lab, session.layout.base, list(specs), session.target_name, session.target)
    options = ExecutionOptions(concurrency, mem, continue_on_failure, runtime, load_resources(resources_path))
    done_before = len(plan.closure) - len(plan.to_run)
    if not plan.to_run:
        _finish(as_json, plan, None, f"Nothing to do: all {len(plan.closure)} jobs of the selection have succeeded "
                                     f"(outputs under {plan.layout.outputs}).")
        return
    if fallback_notice:
        click.echo(fallback_notice, err=True)
    embedded = EmbeddedRun(plan, options)
    log_dir = plan.layout.repx_dir
    if as_json:
        reporter = None
    elif sys.stderr.isatty():
        from .live import RichReporter, job_labels  # rich only when a terminal shows it
        reporter = RichReporter(len(plan.to_run), log_dir, job_labels(plan.lab, plan.to_run))
    else:
        reporter = PlainReporter(len(plan.to_run), log_dir)
    if reporter is not None:
        embedded.reporter = reporter
        where = (f"through {DISPLAY_NAMES[embedded.scheduler]}" if embedded.scheduler in DISPLAY_NAMES and not concurrency
                 else f"{embedded.admission.slots} at once")
        click.echo(f"Running {len(plan.to_run)} of {len(plan.closure)} jobs ({done_before} already succeeded) "
                   f"on target {plan.target_name} at {_where(plan)}, {where}.", err=True)
    embedded.prepare()
    register_root(plan.layout, plan.lab, lab_path)
    signalled: list[int] = []

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda s=sig: (signalled.append(s), embedded.cancel()))
        return await embedded.run()

    summary = asyncio.run(main())
    if reporter is not None and hasattr(reporter, "close"):
        reporter.close()
    _finish(as_json, plan, summary, summary_message(summary, signalled[0] if signalled else None))
    if summary.cancelled:
        sys.exit(128 + (signalled[0] if signalled else signal.SIGINT))
    if not summary.ok:
        sys.exit(1)


def _where(plan) -> str:
    """The base path jobs run in: an SSH target's is on its host (prepared in a local mirror)."""
    if plan.target is not None and plan.target.address:
        return f"{plan.target.address}:{plan.target.base_path} (mirrored in {plan.layout.base})"
    return str(plan.layout.base)


def _refuse_embedded_only_options(address: str, base_path, concurrency, mem, resources_path) -> None:
    """Options the daemon cannot honour for one run are refused, never dropped: its agents'
    slots, memory, resources.toml and base path are the daemon's configuration."""
    given = [name for name, value in (("--base-path", base_path), ("-j/--jobs", concurrency), ("--mem", mem),
                                      ("--resources", resources_path)) if value is not None]
    if given:
        raise RepxError(f"{', '.join(given)} only apply to a run in this process, but the daemon at {address} "
                        "would run this one (its config sets base path, slots, memory and resources); "
                        "add --embedded to run here, or drop them")


def _finish(as_json: bool, plan, summary, message: str) -> None:
    if not as_json:
        click.echo(message, err=summary is not None)
        return
    record = {
        "lab": plan.lab.lab_id, "base_path": str(plan.layout.base), "target": plan.target_name,
        "selected": len(plan.closure), "already_succeeded": len(plan.closure) - len(plan.to_run),
        "executed": 0, "succeeded": [], "failed": {}, "blocked": [], "not_started": [], "cancelled": False, "seconds": 0.0,
    }
    if summary is not None:
        record.update(executed=len(summary.succeeded) + len(summary.failed), succeeded=summary.succeeded,
                      failed=summary.failed, blocked=summary.blocked, not_started=summary.not_started,
                      cancelled=summary.cancelled, seconds=round(summary.seconds, 3))
    record["ok"] = not (record["failed"] or record["blocked"] or record["not_started"] or record["cancelled"])
    click.echo(json.dumps(record, indent=2))
