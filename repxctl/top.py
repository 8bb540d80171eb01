"""repxctl top: watch runs and jobs in a terminal UI (Textual, imported only here)."""

from __future__ import annotations

from pathlib import Path

import click

from repxd.errors import RepxError

from . import daemon

REFRESH_SECONDS = 1.0


def build_app(source):
    """The Textual app over a source (top_sources): runs, the selected run's jobs by stage, the
    selected job's log tail; keys c/r/d act on the daemon, q quits."""
    from textual.app import App, ComposeResult
    from textual.containers import Horizontal, Vertical
    from textual.widgets import DataTable, Footer, Header, Static

    class Top(App):
        TITLE = "repx top"
        CSS = "#runs { height: 8; } #jobs { height: 1fr; } #log { height: 12; border: round $accent; }"
        BINDINGS = [("q", "quit", "Quit"), ("c", "cancel", "Cancel run"), ("r", "retry", "Retry run"),
                    ("d", "drain", "Drain agents")]

        def __init__(self) -> None:
            super().__init__()
            self.source = source
            self.run_id: str | None = None
            self.job_id: str | None = None

        def compose(self) -> ComposeResult:
            yield Header()
            with Vertical():
                yield DataTable(id="runs", cursor_type="row")
                with Horizontal():
                    yield DataTable(id="jobs", cursor_type="row")
                yield Static("", id="log")
                yield Static("", id="status")
            yield Footer()

        def on_mount(self) -> None:
            self.sub_title = source.where
            self.query_one("#runs", DataTable).add_columns("run", "state", "jobs")
            self.query_one("#jobs", DataTable).add_columns("stage", "job", "state", "tries", "reason")
            self.refresh_data()
            self.set_interval(REFRESH_SECONDS, self.refresh_data)

        def refresh_data(self) -> None:
            runs = self.source.runs()
            table = self.query_one("#runs", DataTable)
            table.clear()
            for run in runs:
                table.add_row(run.id, run.state, run.counts, key=run.id)
            if runs and self.run_id not in {r.id for r in runs}:
                self.run_id = runs[0].id
            if self.run_id is None:
                return
            jobs = sorted(self.source.jobs(self.run_id), key=lambda j: (j.stage, j.job_id))
            table = self.query_one("#jobs", DataTable)
            cursor = table.cursor_row
            table.clear()
            for job in jobs:
                table.add_row(job.stage, job.job_id[:12], job.state, str(job.tries), job.reason, key=job.job_id)
            if jobs:
                table.move_cursor(row=min(cursor, len(jobs) - 1))
                self.job_id = jobs[min(cursor, len(jobs) - 1)].job_id
                self.query_one("#log", Static).update(f"log of {self.job_id[:12]} (stderr, last lines)\n"
                                                      + self.source.log_tail(self.job_id))

        def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
            if event.row_key is None or event.row_key.value is None:
                return
            if event.data_table.id == "runs":
                self.run_id = event.row_key.value
            else:
                self.job_id = event.row_key.value
                self.query_one("#log", Static).update(f"log of {self.job_id[:12]} (stderr, last lines)\n"
                                                      + self.source.log_tail(self.job_id))

        def _act(self, action) -> None:
            try:
                message = action()
            except RepxError as exc:  # the daemon's refusal is shown, not raised into the UI
                message = str(exc)
            self.query_one("#status", Static).update(message)
            self.refresh_data()

        def action_cancel(self) -> None:
            if self.run_id:
                self._act(lambda: self.source.cancel(self.run_id))

        def action_retry(self) -> None:
            if self.run_id:
                self._act(lambda: self.source.retry(self.run_id))

        def action_drain(self) -> None:
            self._act(self.source.drain)

    return Top()


@click.command()
@daemon.API_OPTION
@click.option("--base-path", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Watch an embedded base path instead of the daemon.")
def top(api_address, base_path) -> None:
    """Watch runs, jobs by stage and a job's log in a terminal UI; c cancels, r retries the
    selected run, d drains the daemon's agents, q quits."""
    from .top_sources import DaemonSource, EmbeddedSource

    if base_path is not None:
        source = EmbeddedSource(base_path)
    else:
        api = daemon.connect(api_address)
        if not api.reachable():
            raise click.UsageError(f"no repx daemon answers at {api.address}; start it, or pass --base-path DIR")
        source = DaemonSource(api)
    build_app(source).run()
