"""Following a daemon run in the foreground, reported as an embedded run is: the same per-job
lines, the same final summary naming failed jobs, the same exit codes, Ctrl-C cancels it."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from repxd.engine.local import RunSummary
from repxd.errors import RepxError
from repxd.exec.layout import OutputLayout
from repxd.lab.loader import load_lab

from .render import PlainReporter

if TYPE_CHECKING:  # the HTTP clients: only a run through the daemon imports them (daemon.connect)
    from repxd.api.client import Api

# The daemon's reason for jobs it dropped after a failure (repxd.store.queries._settle_job).
NOT_STARTED = "not started: an earlier job failed"


def summary_message(outcome: RunSummary, signum: int | None = None) -> str:
    """The last line of `repxctl run`, in both modes."""
    if outcome.cancelled:
        why = f" ({signal.Signals(signum).name})" if signum else ""
        return f"Cancelled{why}: {len(outcome.succeeded)} jobs finished; stopped jobs left no markers."
    parts = [f"{len(outcome.succeeded)} succeeded", f"{len(outcome.failed)} failed"]
    if outcome.blocked:
        parts.append(f"{len(outcome.blocked)} blocked by failures")
    if outcome.not_started:
        parts.append(f"{len(outcome.not_started)} not started (stopped after the first failure; "
                     "--continue-on-failure runs them)")
    return f"Done in {outcome.seconds:.1f}s: " + ", ".join(parts) + "."


class _Interrupted:
    """SIGINT/SIGTERM while following: remember it; the loop cancels the run and reports."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> _Interrupted:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def follow_run(api: Api, run_id: str, as_json: bool) -> None:
    """Show a submitted run until it ends; exit 0 succeeded, 1 failed, 128+signal when this
    command was interrupted (it cancels the run first)."""
    run = api.call("GET", f"/v1/runs/{run_id}")
    layout = OutputLayout(Path(run["base_path"]))
    reporter = None
    reported: set[str] = set()
    started: set[str] = set()
    signum = None
    with _Interrupted() as interrupt:
        while True:
            if interrupt.signum is not None and signum is None and not run["done"]:
                signum = interrupt.signum  # a second Ctrl-C while it stops changes nothing
                api.call("POST", f"/v1/runs/{run_id}/cancel")
            jobs = api.listing("/v1/jobs", {"run": run_id})
            attempts = {a["job_id"]: a for a in api.listing("/v1/attempts", {"run": run_id})}
            if reporter is None and not as_json:
                # Jobs with no attempt in this run that are done were done before it: not counted.
                total = sum(1 for j in jobs if j["job_id"] in attempts or j["state"] != "succeeded")
                reporter = _reporter(run, total, layout, [j["job_id"] for j in jobs])
            if reporter is not None:
                _report(reporter, jobs, attempts, started, reported)
            if run["done"]:
                break
            time.sleep(0.25)
            run = api.call("GET", f"/v1/runs/{run_id}")
    if reporter is not None and hasattr(reporter, "close"):
        reporter.close()
    outcome = _outcome(run, jobs, attempts)
    if as_json:
        click.echo(json.dumps(run | _outcome_json(outcome), indent=2))
    else:
        click.echo(summary_message(outcome, signum), err=True)
    if signum is not None:
        sys.exit(128 + signum)
    if run["state"] == "cancelled":
        sys.exit(130)
    if run["state"] == "failed":
        sys.exit(1)


def _reporter(run: dict, total: int, layout: OutputLayout, job_ids: list[str]):
    """The embedded run's display: the live view on a terminal (jobs named from the run's Lab),
    else one line per job."""
    if not sys.stderr.isatty():
        return PlainReporter(total, layout.repx_dir)
    from .live import RichReporter, job_labels  # rich only when a terminal shows it

    labels = {}
    # The Lab only names the jobs (the daemon has verified it): the daemon's copy when this user
    # may read it, else the directory they submitted.
    for where in (run["lab_path"], run["options"].get("submitted_lab")):
        try:
            lab = load_lab(where, verify=False)
        except (RepxError, OSError, TypeError):
            continue
        labels = job_labels(lab, [j for j in job_ids if j in lab.jobs])
        break
    return RichReporter(total, layout.repx_dir, labels)


def _report(reporter, jobs: list[dict], attempts: dict, started: set[str], reported: set[str]) -> None:
    for job in jobs:
        job_id, attempt = job["job_id"], attempts.get(job["job_id"])
        if attempt is None or job_id in reported:
            continue
        if job["state"] == "running" and job_id not in started:
            started.add(job_id)
            reporter.started(job_id)
        elif job["state"] in ("succeeded", "failed"):
            reported.add(job_id)
            seconds = (attempt["ended"] or time.time()) - (attempt["started"] or attempt["created"])
            reporter.finished(job_id, job["state"] == "succeeded", seconds, job["reason"])


def _outcome(run: dict, jobs: list[dict], attempts: dict) -> RunSummary:
    """The daemon's run in the embedded engine's terms."""
    outcome = RunSummary([job["job_id"] for job in jobs], cancelled=run["state"] == "cancelled",
                         seconds=(run["finished"] or time.time()) - run["created"])
    for job in jobs:
        state, job_id = job["state"], job["job_id"]
        if state == "succeeded" and job_id in attempts:
            outcome.succeeded.append(job_id)
        elif state == "failed":
            outcome.failed[job_id] = job["reason"] or "failed"
        elif state == "blocked":
            outcome.blocked.append(job_id)
        elif state == "cancelled" and job["reason"] == NOT_STARTED:
            outcome.not_started.append(job_id)
    return outcome


def _outcome_json(outcome: RunSummary) -> dict:
    """The keys of embedded `run --json`, so scripts read both modes alike."""
    return {"succeeded": outcome.succeeded, "failed": outcome.failed, "blocked": outcome.blocked,
            "not_started": outcome.not_started, "cancelled": outcome.cancelled,
            "seconds": round(outcome.seconds, 3), "executed": len(outcome.succeeded) + len(outcome.failed),
            "ok": outcome.ok}

