"""repxctl: the command people type. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import sys

import click

from repxd import __version__
from repxd.config import LoggingSettings, load_config
from repxd.errors import RepxError
from repxd.observe.session_log import start_session_log

from . import daemon, gc, hardware, inspect, run, viz


class RepxctlGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RepxError as exc:
            click.echo(f"repxctl: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=RepxctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="repxctl")
def cli() -> None:
    """Run and inspect RepX Labs: reproducible experiments built by Nix."""
    start_session_log(logging_settings())


def logging_settings() -> LoggingSettings:
    """config.toml's [logging]; defaults when the file is bad, as upstream — the command itself
    reports that file's error."""
    try:
        return load_config().logging
    except RepxError:
        return LoggingSettings()


cli.add_command(run.run)
cli.add_command(inspect.list_)
cli.add_command(inspect.show)
cli.add_command(inspect.log)
cli.add_command(inspect.trace_params)
cli.add_command(viz.viz)
cli.add_command(gc.gc)
cli.add_command(hardware.hardware)
for command in (daemon.status, daemon.runs, daemon.jobs, daemon.cancel, daemon.retry, daemon.agents):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="repxctl")
