"""repxctl gc: delete outputs and artifacts no GC root needs; list, pin and unpin roots (as upstream `repx gc`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from repxd.engine.embedded import base_path_for, open_lab, resolve_target
from repxd.errors import RepxError, SelectionError
from repxd.exec.gcroots import (
    Root,
    collect,
    drop_auto_roots,
    drop_root,
    forget_guards,
    forget_synced_labs,
    garbage,
    garbage_artifacts,
    list_roots,
    migrate_legacy,
    pin,
    record_for,
    root_dict,
    roots_dir,
    size_of,
)
from repxd.exec.layout import OutputLayout
from repxd.user_config import load_config

from .common import default_lab, default_target
from .table import print_table


def store_options(func):
    """Where the roots live; accepted before the subcommand (on `gc`) and after it."""
    for option in reversed([
        click.option("--base-path", type=click.Path(path_type=Path)),
        click.option("--target", default=default_target),
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path)),
    ]):
        func = option(func)
    return func


def open_layout(base_path: Path | None, target: str | None, config_path: Path | None) -> OutputLayout:
    ctx = click.get_current_context()
    group = ctx.parent.params if ctx.parent and ctx.parent.command is gc else {}
    base_path, target, config_path = (base_path or group.get("base_path"), target or group.get("target"),
                                      config_path or group.get("config_path"))
    name, target_cfg = resolve_target(load_config(config_path), target)
    return OutputLayout(base_path_for(target_cfg, base_path, name))


@click.group(invoke_without_command=True)
@store_options
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (asked only on a terminal).")
@click.option("--pinned-only", is_flag=True, help="Forget every auto root first: only pinned Labs are kept.")
@click.option("--roots", "show_roots", is_flag=True, help="List the GC roots and stop (see also `gc list`).")
@click.option("--drop-root", "drop", multiple=True, metavar="LAB_ID", help="Forget a Lab's roots first (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx, base_path, target, config_path, dry_run, yes, pinned_only, show_roots, drop, as_json) -> None:
    """Delete job outputs and artifacts that no GC root references. Every `repxctl run` registers its
    Lab as an auto root (the last 5 per project are kept); `gc pin` keeps a Lab until unpinned."""
    if ctx.invoked_subcommand is not None:
        return
    layout = open_layout(base_path, target, config_path)
    roots = list_roots(layout)
    if show_roots:
        _print_roots(roots, as_json, sizes=False, layout=layout)
        return
    dropped = {_one_root(roots, spec) for spec in drop}
    # The roots that survive: without the dropped Labs, and (--pinned-only) without auto roots.
    kept = [r for r in roots if r.lab_id not in dropped and not (pinned_only and r.kind == "auto")]
    doomed, doomed_artifacts = garbage(layout, kept), garbage_artifacts(layout, kept)
    if not dry_run and (doomed or doomed_artifacts) and not yes and sys.stdin.isatty():
        click.confirm(f"Delete {len(doomed)} output directories and {len(doomed_artifacts)} artifacts?", abort=True)
    freed = 0
    if not dry_run:
        migrate_legacy(layout)
        for lab_id in dropped:
            drop_root(layout, lab_id)
        if pinned_only:
            drop_auto_roots(layout)
        try:
            freed = collect(doomed) + collect(doomed_artifacts)
            forget_guards(layout, {p.name for p in doomed})
        except OSError as exc:
            raise RepxError(f"cannot delete {exc.filename}: {exc.strerror}") from None
        if doomed_artifacts:
            forget_synced_labs(layout, kept)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "deleted": [p.name for p in doomed],
                               "artifacts_deleted": [str(p.relative_to(layout.artifacts)) for p in doomed_artifacts],
                               "bytes_freed": freed}, indent=2))
        return
    for path in [*doomed, *doomed_artifacts]:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
    counts = f"{len(doomed)} output directories and {len(doomed_artifacts)} artifacts"
    click.echo(f"{counts} {'to delete' if dry_run else f'deleted, {freed} bytes freed'}.", err=True)


def _print_roots(roots: list[Root], as_json: bool, sizes: bool, layout: OutputLayout) -> None:
    size = {r.path: sum(size_of(layout.job_root(j)) for j in r.jobs if layout.job_root(j).is_dir()) for r in roots} if sizes else {}
    if as_json:
        click.echo(json.dumps([root_dict(r) | ({"bytes": size[r.path]} if sizes else {}) for r in roots], indent=2))
        return
    print_table(["KIND", "NAME", "LAB", "PROJECT", "JOBS", "REGISTERED", *(["BYTES"] if sizes else []), "PATH"],
                [[r.kind, r.name, r.lab_id, r.project or "-", len(r.jobs),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r.registered)), *([size[r.path]] if sizes else []), r.lab]
                 for r in roots])
    if sizes:
        click.echo(f"total: {sum(size.values())} bytes of outputs")


@gc.command("list")
@store_options
@click.option("--sizes", is_flag=True, help="Disk usage of each root's outputs.")
@click.option("--kind", type=click.Choice(["auto", "pinned"]), help="Only roots of this kind.")
@click.option("--project", help="Only auto roots whose project id contains this.")
@click.option("--json", "as_json", is_flag=True)
def gc_list(base_path, target, config_path, sizes, kind, project, as_json) -> None:
    """All GC roots, auto and pinned."""
    layout = open_layout(base_path, target, config_path)
    roots = [r for r in list_roots(layout) if (kind is None or r.kind == kind) and (project is None or project in r.project)]
    _print_roots(roots, as_json, sizes, layout)


@gc.command("status")
@store_options
@click.option("-l", "--lab", "lab_path", type=click.Path(path_type=Path), default=default_lab, help="The Lab (default: -l, $REPX_LAB, ./result).")
def gc_status(base_path, target, config_path, lab_path) -> None:
    """Whether the Lab is pinned, and how many auto roots exist."""
    layout = open_layout(base_path, target, config_path)
    lab_id = _lab_id(layout, lab_path)
    roots = list_roots(layout)
    pins = [r.name for r in roots if r.kind == "pinned" and r.lab_id == lab_id]
    click.echo(f"Lab {lab_id}: " + (f"pinned as {', '.join(pins)}" if pins else "not pinned"))
    click.echo(f"{sum(r.kind == 'auto' for r in roots)} auto roots, {sum(r.kind == 'pinned' for r in roots)} pinned under {roots_dir(layout)}")


@gc.command("pin")
@click.argument("lab_hash", required=False)
@click.option("--name", help="Name of the pin (default: the Lab id).")
@store_options
@click.option("-l", "--lab", "lab_path", type=click.Path(path_type=Path), default=default_lab, help="The Lab to pin when no LAB_HASH is given.")
def gc_pin(lab_hash, name, base_path, target, config_path, lab_path) -> None:
    """Keep a Lab's outputs and artifacts until unpinned. LAB_HASH: a Lab id (or prefix) among the roots;
    without it, the current Lab."""
    layout = open_layout(base_path, target, config_path)
    if lab_hash is not None:
        root = next(r for r in list_roots(layout) if r.lab_id == _one_root(list_roots(layout), lab_hash))
        record = {k: v for k, v in root_dict(root).items() if k in ("lab_id", "lab", "registered", "jobs", "artifacts")}
    else:
        record = record_for(_open(layout, lab_path))
    name = name or record["lab_id"]
    if not name or "/" in name or name.startswith("."):
        raise SelectionError(f"pin name {name!r} cannot be a file name; use letters, digits, '-' and '_' (--name NAME)")
    path = pin(layout, record, name)
    click.echo(f"pinned Lab {record['lab_id']} as {name} ({path})")


@gc.command("unpin")
@click.argument("name")
@store_options
def gc_unpin(name, base_path, target, config_path) -> None:
    """Remove the pinned root NAME; its Lab's files become collectable unless another root needs them."""
    layout = open_layout(base_path, target, config_path)
    pins = {r.name: r for r in list_roots(layout) if r.kind == "pinned"}
    if name not in pins:
        raise SelectionError(f"no pinned root named {name!r}; pinned: {', '.join(sorted(pins)) or 'none'} (see `repxctl gc list`)")
    Path(pins[name].path).unlink()
    click.echo(f"unpinned {name}")


def _open(layout: OutputLayout, lab_path: Path | None):
    if lab_path is None:
        raise SelectionError("no Lab given: pass LAB_HASH, or --lab PATH (or -l PATH before the command)")
    return open_lab(lab_path, layout.base, verify=False)


def _lab_id(layout: OutputLayout, lab_path: Path | None) -> str:
    return _open(layout, lab_path).lab_id


def _one_root(roots: list[Root], spec: str) -> str:
    """The Lab id a value names: exactly, or as the prefix of exactly one root's Lab."""
    ids = {r.lab_id for r in roots}
    matches = [i for i in ids if i == spec] or sorted(i for i in ids if spec and i.startswith(spec))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RepxError(f"{spec!r} is ambiguous; it matches the roots {', '.join(matches)}")
    raise RepxError(f"no root for Lab {spec!r} (see `repxctl gc list`)")
