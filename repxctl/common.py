"""Options shared by the commands that open a Lab against a base path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import click

from repxd.engine.embedded import base_path_for, open_lab, resolve_target
from repxd.errors import RepxError
from repxd.exec.layout import OutputLayout
from repxd.lab.graph import JobStatus
from repxd.lab.model import Lab
from repxd.user_config import Config, TargetConfig, load_config, parse_memory


def default_lab() -> str | None:
    """The global `-l/--lab`, else `$REPX_LAB`, else `./result` (what `nix build` leaves) when it exists."""
    ctx = click.get_current_context(silent=True)
    global_lab = ctx.find_root().params.get("global_lab") if ctx else None
    if global_lab is not None:
        return str(global_lab)
    return os.environ.get("REPX_LAB") or ("result" if Path("result").exists() else None)


def default_target() -> str | None:
    """The global `--target` given before the command, as upstream's."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params.get("global_target") if ctx else None


def default_resources() -> Path | None:
    """The global `--resources FILE` given before the command, as upstream's."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params.get("global_resources") if ctx else None


def lab_options(func):
    options = [
        click.option("-l", "--lab", "lab_path", type=click.Path(path_type=Path), default=default_lab,
                     help="Lab directory or .tar (default: $REPX_LAB, else ./result)."),
        click.option("--base-path", type=click.Path(path_type=Path), help="Where outputs live (default: the target's base_path)."),
        click.option("--target", default=default_target, help="Target from config.toml (default: local)."),
        click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="config.toml (default: $XDG_CONFIG_HOME/repx/config.toml)."),
        click.option("--no-verify", is_flag=True, help="Skip the SHA-256 check of the Lab's files."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class Session:
    lab: Lab
    layout: OutputLayout
    config: Config
    target_name: str
    target: TargetConfig | None
    # A daemon run's queued and running jobs: the files under the base path cannot tell them from pending ones.
    active: dict[str, JobStatus] = field(default_factory=dict)


def open_session(lab_path: Path | None, base_path: Path | None, target: str | None,
                 config_path: Path | None, no_verify: bool) -> Session:
    if lab_path is None:
        raise RepxError("no Lab given: pass --lab PATH (the directory `nix build` produced), or set REPX_LAB")
    config = load_config(config_path)
    target_name, target_cfg = resolve_target(config, target)
    base = base_path_for(target_cfg, base_path, target_name)
    lab = open_lab(lab_path, base, verify=not no_verify)
    for warning in lab.warnings:
        click.echo(f"repxctl: warning: {warning}", err=True)
    return Session(lab, OutputLayout(base), config, target_name, target_cfg)


DAEMON_ACTIVE = {"queued": JobStatus.QUEUED, "running": JobStatus.RUNNING}


def open_view(lab_path: Path | None, base_path: Path | None, target: str | None,
              config_path: Path | None, no_verify: bool) -> Session:
    """The session of a command that looks at outputs (list, show, log, trace-params, viz). Without
    --base-path, when a daemon answers and has run this Lab (without a Lab: the daemon's latest
    run), its outputs are read where the daemon wrote them, with its queued and running jobs, so
    that a daemon run and an embedded one show alike. Otherwise, the embedded base path."""
    daemon_run = _daemon_run(lab_path) if base_path is None else None
    if daemon_run is None:
        return open_session(lab_path, base_path, target, config_path, no_verify)
    run, api = daemon_run
    lab = _submitted_lab(run)
    click.echo(f"repxctl: showing daemon run {run['id']} of {lab} (outputs under {run['base_path']}; "
               f"--base-path for another)", err=True)
    session = open_session(Path(lab), Path(run["base_path"]), target, config_path, no_verify)
    for state, status in DAEMON_ACTIVE.items():
        session.active |= {job["job_id"]: status for job in api.listing("/v1/jobs", {"run": run["id"], "state": state})}
    return session


def _daemon_run(lab_path: Path | None):
    """(the daemon's newest run of this Lab, or its newest run at all without a Lab; its client),
    or None when no daemon answers or it has no such run."""
    from .daemon import connect  # lazily: the HTTP client is not needed where no daemon is asked

    given = os.environ.get("REPX_API")
    api = connect(given)
    if not api.reachable():
        if given and lab_path is None:
            raise RepxError(f"no Lab given (pass --lab PATH or set REPX_LAB) and no repx daemon answers at {given} ($REPX_API)")
        if given:  # an address was given: say that it was not used, rather than fall back silently
            click.echo(f"repxctl: warning: no repx daemon answers at {given} ($REPX_API); "
                       "showing the outputs under this machine's base path", err=True)
        return None
    wanted = str(lab_path.resolve()) if lab_path is not None else None
    for run in api.call("GET", "/v1/runs", params={"limit": 100}):
        if wanted is None or _submitted_lab(run) == wanted:
            return run, api
    return None


def _submitted_lab(run: dict) -> str:
    """The Lab as the submitter named it: a root daemon runs a user's Lab from its own copy."""
    return (run.get("options") or {}).get("submitted_lab") or run["lab_path"]


class MemorySize(click.ParamType):
    """A size such as 512M or 8G, checked when the command line is read: a bad one is a usage
    error (one line, exit 2), not a failure deep inside the run. The text is kept as given."""

    name = "size"

    def convert(self, value, param, ctx):
        try:
            parse_memory(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value
