"""The live view of `repxctl run` on a terminal: a progress bar with counts, elapsed time and
ETA, and a table of the running jobs, redrawn by rich on a timer (so it never freezes between
job events); failures print above it and stay."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from repxd.engine.local import Reporter

from .render import log_hint

REFRESHES_PER_SECOND = 4
MAX_ROWS = 12


def job_labels(lab, job_ids) -> dict[str, str]:
    """Stage name plus the parameters that differ between jobs of that stage, so that three
    jobs of one stage read apart (`nap[seconds=1]`, `nap[seconds=2]`, ...)."""
    by_stage: dict[str, list] = defaultdict(list)
    for job_id in job_ids:
        job = lab.jobs[job_id]
        by_stage[job.name].append(job)
    labels = {}
    for name, jobs in by_stage.items():
        keys = sorted({k for job in jobs for k in job.params})
        varying = [k for k in keys if len({repr(job.params.get(k)) for job in jobs}) > 1]
        for job in jobs:
            suffix = ",".join(f"{k}={job.params.get(k)}" for k in varying)
            labels[job.id] = f"{name}[{suffix}]" if suffix else name
    return labels


class RichReporter(Reporter):
    """Counts and running jobs as a rich Live display on stderr."""

    def __init__(self, total: int, log_dir, labels: dict[str, str]) -> None:
        self.total = total
        self.log_dir = log_dir
        self.labels = labels
        self.running: dict[str, float] = {}
        self.ok = self.failed = 0
        # The view is on stderr; its width is stderr's terminal even when stdout is redirected
        # (a terminal that reports no size gets 80 columns).
        width = os.get_terminal_size(sys.stderr.fileno()).columns or 80
        self.console = Console(file=sys.stderr, width=width)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        self.task = self.progress.add_task(self._counts(), total=total)
        # Started with the first job, so an error while preparing leaves the terminal as it was.
        self.live = Live(self, console=self.console, refresh_per_second=REFRESHES_PER_SECOND)

    def _counts(self) -> str:
        pending = self.total - self.ok - self.failed - len(self.running)
        return f"done {self.ok} · failed {self.failed} · running {len(self.running)} · pending {pending}"

    def __rich__(self):
        self.progress.update(self.task, description=self._counts(), completed=self.ok + self.failed)
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("job")
        table.add_column("stage")
        table.add_column("elapsed", justify="right")
        now = time.monotonic()
        running = sorted(dict(self.running).items(), key=lambda item: item[1])
        for job_id, started in running[:MAX_ROWS]:
            # Text, not markup: a label like `nap[seconds=3]` must not read as a style tag.
            table.add_row(Text(job_id[:12]), Text(self.labels.get(job_id, job_id)), f"{now - started:.1f}s")
        if len(running) > MAX_ROWS:
            table.add_row("", f"… and {len(running) - MAX_ROWS} more", "")
        return Group(self.progress, table) if running else self.progress

    def started(self, job_id: str) -> None:
        if not self.live.is_started:
            self.live.start()
        self.running[job_id] = time.monotonic()

    def finished(self, job_id: str, ok: bool, seconds: float, reason: str | None) -> None:
        self.running.pop(job_id, None)
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self.console.print(f"FAIL {job_id}: {reason}{log_hint(self.log_dir(job_id))}",
                               markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.live.is_started:
            self.live.refresh()
            self.live.stop()
