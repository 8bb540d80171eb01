"""repxctl: the command people type. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from repxd import __version__
from repxd.config import LoggingSettings, load_config
from repxd.errors import RepxError
from repxd.observe.session_log import start_session_log

from . import daemon, debug_run, gc, hardware, init, inspect, listing, pull, run, top, viz


class RepxctlGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RepxError as exc:
            click.echo(f"repxctl: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=RepxctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="repxctl")
# Global as in upstream `repx -l LAB -v …`; a command's own --lab still wins (see common.default_lab).
@click.option("-l", "--lab", "global_lab", type=click.Path(path_type=Path), help="Lab for every command (default: $REPX_LAB, else ./result).")
@click.option("--target", "global_target", help="Target from config.toml for every command (a command's own --target wins).")
@click.option("--resources", "global_resources", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="resources.toml for run, show job and debug-run (a command's own option wins).")
@click.option("-v", "--verbose", count=True, help="More logging: -v debug.")
def cli(global_lab, global_target, global_resources, verbose) -> None:
    """Run and inspect RepX Labs: reproducible experiments built by Nix."""
    start_session_log(logging_settings())
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def logging_settings() -> LoggingSettings:
    """config.toml's [logging]; defaults when the file is bad, as upstream — the command itself
    reports that file's error."""
    try:
        return load_config().logging
    except RepxError:
        return LoggingSettings()


cli.add_command(run.run)
cli.add_command(listing.list_)
cli.add_command(inspect.show)
cli.add_command(inspect.log)
cli.add_command(inspect.trace_params)
cli.add_command(viz.viz)
cli.add_command(gc.gc)
cli.add_command(hardware.hardware)
cli.add_command(init.init)
cli.add_command(init.completions)
cli.add_command(top.top)
cli.add_command(top.top, "tui")  # upstream's name for its dashboard
cli.add_command(debug_run.debug_run)
cli.add_command(pull.pull)
for command in (daemon.status, daemon.runs, daemon.jobs, daemon.cancel, daemon.retry, daemon.agents):
    cli.add_command(command)


def main() -> None:
    try:
        # standalone_mode=False: click's usage errors come here, to be printed as one line.
        code = cli.main(prog_name="repxctl", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"repxctl: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"repxctl: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("repxctl: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
