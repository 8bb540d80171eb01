"""repxctl: the command people type. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from repxd import __version__
from repxd.errors import RepxError

# The commands, imported when one is used: `repxctl --help` (and completion) must not pay for
# aiohttp, httpx, pydantic and rich (half a second). name -> (module, attribute, the short help
# its docstring gives; tests/unit/test_cli_startup.py keeps the two equal).
LAZY_COMMANDS = {
    "run": ("run", "run", "Run SPECS (run names, @groups or job-id prefixes) and everything they depend on."),
    "list": ("listing", "list_", "List runs, jobs, groups or a job's dependencies (no subcommand: runs, as upstream)."),
    "show": ("inspect", "show", "Show one job, or where its outputs are."),
    "log": ("inspect", "log", "Print a job's stdout (or --stderr) log."),
    "trace-params": ("inspect", "trace_params", "Effective parameters of a job (without JOB: of every job, as upstream) "
                                                "and which job each comes from (own parameters win)."),
    "viz": ("viz", "viz", "Draw the DAG of SPECS (default: the whole Lab) with Graphviz."),
    "gc": ("gc", "gc", "Delete job outputs and artifacts that no GC root references."),
    "hardware": ("hardware", "hardware", "GPUs, CPU and memory of each agent, and which GPUs running jobs hold."),
    "init": ("init", "init", "Create a new experiment project in PATH: a flake and a one-stage Lab to build with `nix build`."),
    "completions": ("init", "completions", "Print the completion script for SHELL, e.g."),
    "top": ("top", "top", "Watch runs, jobs by stage and a job's log in a terminal UI; c cancels, r retries the selected run, "
                          "d drains the daemon's agents, q quits."),
    "tui": ("top", "top", "Watch runs, jobs by stage and a job's log in a terminal UI; c cancels, r retries the selected run, "
                          "d drains the daemon's agents, q quits."),  # upstream's name for its dashboard
    "debug-run": ("debug_run", "debug_run", "Run JOB (an id or a unique prefix) in this process, after the jobs whose outputs it "
                                            "reads, one at a time; then print its stdout and stderr logs and where its outputs are."),
    "pull": ("pull", "pull", "Fetch RUN's job outputs (outputs/<job>/) from an SSH target, incrementally (rsync)."),
    "status": ("daemon", "status", "Roles, agents and the queue of the daemon."),
    "runs": ("daemon", "runs", "Recent runs, or one run in detail when RUN_ID (or a prefix) is given."),
    "jobs": ("daemon", "jobs", "Jobs the daemon knows, with their state and tries."),
    "cancel": ("daemon", "cancel", "Cancel a run: unstarted jobs are dropped, running ones stopped (unless another run shares them)."),
    "retry": ("daemon", "retry", "Requeue a run's failed, blocked and cancelled jobs."),
    "agents": ("daemon", "agents", "List agents; `agents drain|undrain|forget NAME` changes one."),
}


class RepxctlGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attribute, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"{__package__}.{module}"), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a command not loaded yet is described from LAZY_COMMANDS."""
        names = [name for name in self.list_commands(ctx) if name not in self.commands or not self.commands[name].hidden]
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands
                 else click.Command(name, help=LAZY_COMMANDS[name][2]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
    from repxd.observe.session_log import start_session_log  # with pydantic: not for --help

    start_session_log(logging_settings())
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def logging_settings():
    """config.toml's [logging]; defaults when the file is bad, as upstream — the command itself
    reports that file's error."""
    from repxd.user_config import LoggingSettings, load_config

    try:
        return load_config().logging
    except RepxError:
        return LoggingSettings()


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
