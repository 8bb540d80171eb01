"""`repxctl pull RUN --target T`: a run's job outputs from an SSH target into this machine's copy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from repxd.engine.embedded import open_lab
from repxd.errors import ConfigError, RepxError
from repxd.exec.layout import OutputLayout
from repxd.lab.graph import select
from repxd.targets.commands import CommandMissing
from repxd.targets.ssh.connection import SshError, connection_for, is_connection_problem
from repxd.targets.ssh.sync import RemoteBase, local_base_for
from repxd.user_config import load_config

from .common import default_lab, default_target


class PullFailed(RepxError):
    """The target could not be reached or read: not the user's input, so not exit 2."""

    exit_code = 1


@click.command()
@click.argument("run_spec", metavar="RUN")
@click.option("-l", "--lab", "lab_path", type=click.Path(path_type=Path), default=default_lab,
              help="Lab directory or .tar (default: $REPX_LAB, else ./result).")
@click.option("--target", default=default_target, help="SSH target from config.toml (default: submission_target).")
@click.option("--base-path", type=click.Path(path_type=Path),
              help="Local base path to fill (default: this machine's copy of the target, under $XDG_STATE_HOME/repx/targets/).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="config.toml (default: $XDG_CONFIG_HOME/repx/config.toml).")
@click.option("--no-verify", is_flag=True, help="Skip the SHA-256 check of the Lab's files.")
def pull(run_spec, lab_path, target, base_path, config_path, no_verify) -> None:
    """Fetch RUN's job outputs (outputs/<job>/) from an SSH target, incrementally (rsync)."""
    if lab_path is None:
        raise RepxError("no Lab given: pass --lab PATH (the directory `nix build` produced), or set REPX_LAB")
    config = load_config(config_path)
    name = target or config.submission_target
    target_cfg = config.targets.get(name) if name else None
    if target_cfg is None or not target_cfg.address:
        ssh_targets = ", ".join(sorted(n for n, t in config.targets.items() if t.address)) or "none configured"
        raise ConfigError(f"pull needs an SSH target (one with an address): pass --target NAME (SSH targets: {ssh_targets})")
    local = OutputLayout((base_path or local_base_for(name)).expanduser().resolve())
    lab = open_lab(lab_path, local.base, verify=not no_verify)
    jobs = select(lab, [run_spec])
    remote = RemoteBase(connection_for(name, target_cfg), target_cfg.base_path)
    try:
        stats = asyncio.run(remote.pull_outputs(jobs, local.outputs))
    except (SshError, CommandMissing) as exc:
        hint = " (try again when the host is back)" if is_connection_problem(exc) else ""
        raise PullFailed(f"{exc}{hint}") from None
    click.echo(f"pulled {len(jobs)} jobs' outputs from {name} into {local.outputs}: "
               f"{stats.files_transferred} files, {stats.bytes_received} bytes received")
