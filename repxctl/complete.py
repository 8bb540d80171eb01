"""Shell completion of run names, @groups and job ids from the Lab the command line names.

The shell calls these on every Tab press: a Lab that cannot be read (none given, a typo in
--lab, a broken file) completes to nothing rather than printing an error into the prompt."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem


def _lab_path(ctx: click.Context) -> Path | None:
    """The command's --lab, else the global -l/--lab, else $REPX_LAB, else ./result."""
    given = ctx.params.get("lab_path") or ctx.find_root().params.get("global_lab") or os.environ.get("REPX_LAB")
    if given:
        return Path(given)
    return Path("result") if Path("result").exists() else None


def _lab(ctx: click.Context):
    from repxd.lab.loader import load_lab  # pydantic: only when a Lab is to be read

    path = _lab_path(ctx)
    # verify=False: hashing every file on each Tab would make completion slow.
    return None if path is None else load_lab(path, verify=False)


def _matching(names, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


def complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    try:
        lab = _lab(ctx)
    except Exception:  # noqa: BLE001 - any unreadable Lab completes to nothing (see module doc)
        return []
    return [] if lab is None else _matching(lab.jobs, incomplete)


def complete_runs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    try:
        lab = _lab(ctx)
    except Exception:  # noqa: BLE001
        return []
    return [] if lab is None else _matching(lab.runs, incomplete)


def complete_specs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """What `run` and `viz` select: run names and @groups, and job ids once a run name no longer fits."""
    try:
        lab = _lab(ctx)
    except Exception:  # noqa: BLE001
        return []
    if lab is None:
        return []
    named = _matching([*lab.runs, *(f"@{group}" for group in lab.groups)], incomplete)
    # Hundreds of job ids would bury the run names: offer them only when nothing else fits.
    return named or _matching(lab.jobs, incomplete)
