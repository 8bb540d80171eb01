"""repxctl viz: the Lab's DAG as Graphviz, coloured by status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click

from repxd.errors import RepxError
from repxd.lab.graph import JobStatus, closure, select

from .common import lab_options, open_view
from .complete import complete_specs
from .inspect import all_statuses

COLOURS = {
    JobStatus.SUCCEEDED: "#b7e4c7", JobStatus.FAILED: "#f4a3a3", JobStatus.RUNNING: "#ffe08a",
    JobStatus.QUEUED: "#ffe08a", JobStatus.PENDING: "#dde6f5", JobStatus.BLOCKED: "#e0e0e0",
}


def runs_waited_for(lab, job_id: str) -> dict[str, str]:
    """The runs whose jobs this job starts after (run name -> "hard" | "soft"): its inter-run
    inputs name a run, not a job, so these are run-to-job relations, not job edges."""
    return {mapping.source_run: mapping.dependency_type or "hard"
            for exe in lab.jobs[job_id].executables.values() for mapping in exe.inputs
            if mapping.type == "inter-run" and mapping.source_run in lab.runs}


def graph(lab, job_ids, state) -> dict:
    """The drawn DAG as data: the same nodes and edges `to_dot` draws."""
    ordered = [j for j in lab.jobs if j in job_ids]
    return {
        "nodes": [{"id": j, "run": lab.jobs[j].run, "stage": lab.jobs[j].name, "status": state[j].value,
                   "params": lab.jobs[j].params} for j in ordered],
        "edges": [{"from": dep, "to": j, "kind": "soft" if dep in lab.jobs[j].soft_deps else "hard"}
                  for j in ordered for dep in lab.jobs[j].deps if dep in job_ids],
        "run_edges": [{"from_run": run, "to": j, "kind": kind}
                      for j in ordered for run, kind in sorted(runs_waited_for(lab, j).items())
                      if any(member in job_ids for member in lab.runs[run].job_ids)],
    }


def to_dot(lab, job_ids, state) -> str:
    data = graph(lab, job_ids, state)
    # compound: a run edge starts at its run's box (ltail), not at one arbitrary job of that run.
    lines = ["digraph lab {", '  rankdir=LR; compound=true; node [shape=box, style="rounded,filled", fontname="sans"];']
    for run in lab.runs.values():
        members = [j for j in run.job_ids if j in job_ids]
        if not members:
            continue
        lines.append(f"  subgraph {json.dumps('cluster_' + run.name)} {{ label={json.dumps(run.name)};")
        for j in members:
            job = lab.jobs[j]
            params = ", ".join(f"{k}={v}" for k, v in job.params.items())
            label = _dot_label([job.name, j[:8]] + ([params] if params else []))
            lines.append(f'    {json.dumps(j)} [label={label}, fillcolor="{COLOURS[state[j]]}"];')
        lines.append("  }")
    for edge in data["edges"]:
        style = " [style=dashed]" if edge["kind"] == "soft" else ""
        lines.append(f"  {json.dumps(edge['from'])} -> {json.dumps(edge['to'])}{style};")
    for edge in data["run_edges"]:
        anchor = next(j for j in lab.runs[edge["from_run"]].job_ids if j in job_ids)
        style = "dashed" if edge["kind"] == "soft" else "dotted"
        lines.append(f"  {json.dumps(anchor)} -> {json.dumps(edge['to'])} "
                     f"[ltail={json.dumps('cluster_' + edge['from_run'])}, style={style}, label=\"after run\"];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_label(lines: list[str]) -> str:
    """A quoted Graphviz label of these lines: quotes and backslashes in names and params escaped."""
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


@click.command()
@click.argument("specs", nargs=-1, shell_complete=complete_specs)
@lab_options
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write here (default: stdout for dot).")
@click.option("--format", "fmt", type=click.Choice(["dot", "svg", "png"]), help="Default: from -o's suffix, else dot.")
@click.option("--json", "as_json", is_flag=True, help="Print the graph as JSON nodes, job edges and run edges instead.")
def viz(specs, output, fmt, as_json, **kw) -> None:
    """Draw the DAG of SPECS (default: the whole Lab) with Graphviz."""
    session = open_view(**kw)
    lab = session.lab
    job_ids = closure(lab, select(lab, specs)) if specs else set(lab.jobs)
    if as_json:
        if output is not None or fmt is not None:
            raise RepxError("--json prints the graph to stdout; leave out -o/--format, or leave out --json to draw it")
        click.echo(json.dumps(graph(lab, job_ids, all_statuses(session)), indent=2))
        return
    if fmt is None and output is not None:
        suffix = output.suffix.lstrip(".").lower()
        if suffix not in ("svg", "png", "dot", "gv", ""):
            raise RepxError(f"cannot tell the format of {output} from its suffix; pass --format dot, svg or png")
        fmt = {"svg": "svg", "png": "png"}.get(suffix)
    fmt = fmt or "dot"
    dot = to_dot(lab, job_ids, all_statuses(session))
    if fmt == "dot":
        if output:
            try:
                output.write_text(dot)
            except OSError as exc:
                raise RepxError(f"cannot write {output}: {exc.strerror}") from None
        else:
            sys.stdout.write(dot)
        return
    if output is None:
        raise RepxError(f"--format {fmt} writes a binary file; pass -o FILE")
    if shutil.which("dot") is None:
        raise RepxError(f"rendering {fmt} needs Graphviz's `dot` (apt install graphviz), or use --format dot")
    result = subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=dot, text=True, capture_output=True)
    if result.returncode != 0:
        raise RepxError(f"dot failed: {result.stderr.strip()}")
    click.echo(f"wrote {output} ({len(job_ids)} jobs)", err=True)
