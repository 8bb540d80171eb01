"""Showing a run's progress: a live status line on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
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


class LiveReporter(Reporter):
    """A status line redrawn in place (counts and the running jobs); failures stay above it."""

    def __init__(self, total: int, log_dir) -> None:
        self.total = total
        self.log_dir = log_dir
        self.running: dict[str, float] = {}
        self.ok = self.failed = 0
        self._last_draw = 0.0
        self.stream = sys.stderr

    def started(self, job_id: str) -> None:
        self.running[job_id] = time.monotonic()
        self._draw()

    def finished(self, job_id: str, ok: bool, seconds: float, reason: str | None) -> None:
        self.running.pop(job_id, None)
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self._clear()
            self.stream.write(f"FAIL {job_id}: {reason}{log_hint(self.log_dir(job_id))}\n")
        self._draw(force=not ok or self.ok + self.failed == self.total)

    def _clear(self) -> None:
        self.stream.write("\r\x1b[K")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        width = shutil.get_terminal_size().columns
        waiting = self.total - self.ok - self.failed - len(self.running)
        head = f"{self.ok + self.failed}/{self.total} done · {self.ok} ok · {self.failed} failed · {len(self.running)} running · {waiting} waiting"
        oldest = sorted(self.running, key=self.running.__getitem__)[:3]
        names = ", ".join(j.split("-", 1)[1] if "-" in j else j for j in oldest)
        line = f"{head}  [{names}]" if names else head
        self._clear()
        self.stream.write(line[: width - 1])
        self.stream.flush()

    def close(self) -> None:
        self._clear()
        self.stream.flush()
