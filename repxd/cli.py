"""repxd: the daemon's command: the service roles, configuration checks and Lab verification."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from .errors import RepxError
from .lab.loader import load_lab
from .service.daemon_config import load_settings, token_file_errors, validation_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="repxd")
def cli() -> None:
    """repx daemon and engine."""


@cli.command("verify-lab")
@click.argument("lab", type=click.Path(path_type=Path))
@click.option("--no-hashes", is_flag=True, help="Check structure only, not the files' SHA-256.")
@click.option("--json", "as_json", is_flag=True)
def verify_lab(lab: Path, no_hashes: bool, as_json: bool) -> None:
    """Load LAB (directory or .tar) and check it completely; exit 2 with the first problem."""
    try:
        with tempfile.TemporaryDirectory(prefix="repx-verify-") as unpack:
            loaded = load_lab(lab, verify=not no_hashes, unpack_dir=Path(unpack))
            for warning in loaded.warnings:
                click.echo(f"repxd: warning: {warning}", err=True)
            summary = {"lab": loaded.lab_id, "runs": len(loaded.runs), "jobs": len(loaded.jobs),
                       "groups": sorted(loaded.groups), "files_verified": 0 if no_hashes else len(loaded.manifest.files)}
    except RepxError as exc:
        click.echo(f"repxd: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"Lab {summary['lab']}: {summary['runs']} runs, {summary['jobs']} jobs, "
                   f"{summary['files_verified']} files verified.")


CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                             help="repxd.toml (default: /etc/repx/repxd.toml when it exists).")


def _role(name: str, doc: str):
    @cli.command(name, help=doc)
    @CONFIG_OPTION
    def command(config_path: Path | None) -> None:
        from .service.roles import start

        try:
            settings = load_settings(config_path)
        except RepxError as exc:
            click.echo(f"repxd: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        start(name, settings)

    return command


_role("api", "Serve the HTTP API on the Unix socket (and TCP when configured).")
_role("scheduler", "Place ready jobs on agents; expire lost agents.")
_role("agent", "Run jobs the scheduler assigns to this host.")
_role("all", "api, scheduler and agent in one process (the embedded default).")


@cli.command("check-config")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--no-files", is_flag=True,
              help="Do not check the token files (where they exist only on the running host, e.g. a Nix build).")
def check_config(path: Path, no_files: bool) -> None:
    """Report every error of a repxd.toml with its key, and token files the daemon would refuse
    (missing, unreadable, empty, readable by every user); exit 2 if there is one."""
    import tomllib

    from pydantic import ValidationError

    from .service.daemon_config import Settings

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        click.echo(f"{path}: cannot read ({exc.strerror})", err=True)
        sys.exit(2)
    except tomllib.TOMLDecodeError as exc:
        click.echo(f"{path}: not valid TOML ({exc})", err=True)
        sys.exit(2)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for message in validation_errors(exc, str(path)):
            click.echo(message, err=True)
        sys.exit(2)
    problems = [] if no_files else token_file_errors(settings, str(path))
    for message in problems:
        click.echo(message, err=True)
    if problems:
        sys.exit(2)
    click.echo(f"{path}: OK")


@cli.command("hwdetect")
@click.option("--root", "root", type=click.Path(path_type=Path, file_okay=False), default="/", show_default=True,
              help="Read /proc, /sys and /dev under this prefix (a recorded tree).")
@click.option("--tools", type=click.Path(path_type=Path, file_okay=False),
              help="Recorded tool outputs (nvidia-smi-q-x.xml, rocm-smi.json) instead of running the programs.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default="/run/repx/hardware.json",
              show_default=True, help="Where to write the inventory; - for standard output.")
def hwdetect(root: Path, tools: Path | None, output: Path) -> None:
    """Detect GPUs, CPU and memory and write the inventory the agent registers with."""
    from .hardware import detect, write_inventory

    if not root.is_dir():
        click.echo(f"repxd: error: --root {root} is not a directory", err=True)
        sys.exit(2)
    inventory = detect(root, tools)
    if str(output) == "-":
        click.echo(inventory.model_dump_json(indent=2))
        return
    try:
        write_inventory(inventory, output)
    except OSError as exc:
        click.echo(f"repxd: error: cannot write {output} ({exc.strerror})", err=True)
        sys.exit(1)
    click.echo(f"{inventory.summary()}; wrote {output}")


@cli.command("install-units")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default="/", show_default=True,
              help="Install under this root (for packaging or a container image).")
def install_units_command(prefix: Path) -> None:
    """Install the systemd units, sysusers.d and tmpfiles.d entries (Debian, RHEL, …)."""
    from .units import install_units

    for path in install_units(prefix):
        click.echo(f"wrote {path}")
    if str(prefix) == "/":
        click.echo("next: systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload; "
                   "systemctl enable --now repx.target", err=True)


def main() -> None:
    cli(prog_name="repxd")
