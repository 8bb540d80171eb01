"""repxd: the daemon's command. The service roles (api, scheduler, agent) arrive with the
service; for now it verifies Labs, which operators use to check a Lab before publishing it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from .errors import RepxError
from .lab.loader import load_lab


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


def main() -> None:
    cli(prog_name="repxd")
