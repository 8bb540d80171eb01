"""Plain aligned tables: readable in a terminal, stable for grep."""

from __future__ import annotations

import click


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
