"""repxctl gc: delete outputs no registered Lab needs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from repxd.config import load_config
from repxd.engine.embedded import base_path_for, resolve_target
from repxd.errors import RepxError
from repxd.exec.gcroots import Root, collect, drop_root, garbage, list_roots
from repxd.exec.layout import OutputLayout

from .table import print_table


@click.command()
@click.option("--base-path", type=click.Path(path_type=Path))
@click.option("--target")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--roots", "show_roots", is_flag=True, help="List the GC roots (Labs whose outputs are kept) and stop.")
@click.option("--drop-root", "drop", multiple=True, metavar="LAB_ID", help="Forget a Lab's root first (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def gc(base_path, target, config_path, dry_run, show_roots, drop, as_json) -> None:
    """Delete job outputs that no GC root references. Every `repxctl run` registers its Lab as a root."""
    _name, target_cfg = resolve_target(load_config(config_path), target)
    layout = OutputLayout(base_path_for(target_cfg, base_path))
    if show_roots:
        roots = list_roots(layout)
        if as_json:
            click.echo(json.dumps([r.__dict__ for r in roots], indent=2))
        else:
            print_table(["LAB", "JOBS", "REGISTERED", "PATH"],
                        [[r.lab_id, len(r.jobs), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.registered)), r.lab] for r in roots])
        return
    roots = list_roots(layout)
    dropped = {_one_root(roots, spec) for spec in drop}
    if dry_run:
        # What dropping those roots would free, without forgetting them.
        kept = {job for r in roots if r.lab_id not in dropped for job in r.jobs}
        orphans = {layout.job_root(job) for r in roots if r.lab_id in dropped for job in r.jobs if job not in kept}
        doomed = sorted(set(garbage(layout)) | {p for p in orphans if p.is_dir()})
    else:
        for lab_id in dropped:
            drop_root(layout, lab_id)
        doomed = garbage(layout)
    try:
        freed = 0 if dry_run else collect(doomed)
    except OSError as exc:
        raise RepxError(f"cannot delete {exc.filename}: {exc.strerror}") from None
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "deleted": [p.name for p in doomed], "bytes_freed": freed}, indent=2))
        return
    for path in doomed:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
    click.echo(f"{len(doomed)} output directories {'to delete' if dry_run else f'deleted, {freed} bytes freed'}.", err=True)


def _one_root(roots: list[Root], spec: str) -> str:
    """The Lab id a --drop-root value names: exactly, or as the prefix of exactly one root."""
    matches = [r.lab_id for r in roots if r.lab_id == spec] or [r.lab_id for r in roots if spec and r.lab_id.startswith(spec)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RepxError(f"--drop-root {spec!r} is ambiguous; it matches the roots {', '.join(sorted(matches))}")
    raise RepxError(f"no root for Lab {spec!r} (see `repxctl gc --roots`)")
