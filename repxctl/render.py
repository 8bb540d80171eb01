"""Showing a run's progress when stderr is not a terminal: one plain line per job (the live
view for terminals is in live.py)."""

from __future__ import annotations

from pathlib import Path

import click

from repxd.engine.local import Reporter


class PlainReporter(Reporter):
    """One line per finished job: for logs, pipes and CI."""

    def __init__(self, total: int, log_dir) -> None:
        self.total = total
        self.done = 0
        self.log_dir = log_dir

    def finished(self, job_id: str, ok: bool, seconds: float, reason: str | None) -> None:
        self.done += 1
        if ok:
            click.echo(f"[{self.done}/{self.total}] ok    {job_id} ({seconds:.1f}s)")
        else:
            click.echo(f"[{self.done}/{self.total}] FAIL  {job_id}: {reason}{log_hint(self.log_dir(job_id))}")


def log_hint(repx_dir) -> str:
    """Where to look, when the job got as far as writing a log (not for a job that never started)."""
    log = Path(repx_dir) / "stderr.log"
    return f" (log: {log})" if log.exists() else ""
