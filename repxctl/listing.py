"""repxctl list: runs, jobs, groups and dependencies, with upstream `repx list`'s arguments."""

from __future__ import annotations

import json

import click

from repxd.errors import SelectionError
from repxd.lab.graph import JobStatus, dependents_map
from repxd.lab.model import Lab

from .common import lab_options, open_view
from .complete import complete_jobs, complete_runs
from .inspect import all_statuses, effective_params, one_job
from .table import print_table
from .viz import runs_waited_for


def runs_named(lab: Lab, name: str) -> list[str]:
    """The runs a positional NAME means, as upstream: a run, `@group`, a unique run-name prefix, or
    a job-id prefix (the run holding those jobs)."""
    if name.startswith("@"):
        if name[1:] not in lab.groups:
            raise SelectionError(f"unknown group {name!r}; this Lab's groups: {', '.join('@' + g for g in sorted(lab.groups)) or 'none'}")
        return sorted(lab.groups[name[1:]])
    if name in lab.runs:
        return [name]
    matches = sorted(r for r in lab.runs if r.startswith(name))
    if len(matches) == 1:
        return matches
    if matches:
        raise SelectionError(f"run prefix {name!r} is ambiguous; it matches the runs {', '.join(matches)}")
    job_runs = sorted({lab.jobs[j].run for j in lab.jobs if j.startswith(name)})
    if len(job_runs) == 1:
        return job_runs  # a job-id prefix: the run holding it, as upstream
    raise SelectionError(f"unknown run {name!r}; runs: {', '.join(sorted(lab.runs))}")


@click.group("list", invoke_without_command=True)
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List runs, jobs, groups or a job's dependencies (no subcommand: runs, as upstream)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_runs)


@list_.command("runs")
@click.argument("name", required=False, shell_complete=complete_runs)
@lab_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_runs(ctx, name=None, as_json=False, **kw) -> None:
    """The Lab's runs with their job counts and progress; with NAME, that run's jobs (as upstream)."""
    if name is not None:
        ctx.invoke(list_jobs, name=name, as_json=as_json, **kw)
        return
    session = open_view(**kw)
    status = all_statuses(session)
    rows = []
    for run in session.lab.runs.values():
        done = sum(1 for j in run.job_ids if status[j] is JobStatus.SUCCEEDED)
        rows.append({"run": run.name, "jobs": len(run.job_ids), "succeeded": done,
                     "depends_on": sorted(run.dependencies), "image": run.image})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_table(["RUN", "JOBS", "SUCCEEDED", "DEPENDS ON", "IMAGE"],
                    [[r["run"], r["jobs"], r["succeeded"], ",".join(r["depends_on"]) or "-", r["image"] or "-"] for r in rows])


@list_.command("groups")
@click.argument("name", required=False)
@lab_options
@click.option("--json", "as_json", is_flag=True)
def list_groups(name, as_json, **kw) -> None:
    """The Lab's groups (select one with @name); with NAME, only that group."""
    lab = open_view(**kw).lab
    groups = lab.groups
    if name is not None:
        name = name.removeprefix("@")
        if name not in groups:
            raise SelectionError(f"unknown group {name!r}; this Lab's groups: {', '.join(sorted(groups)) or 'none'}")
        groups = {name: groups[name]}
    if as_json:
        click.echo(json.dumps(groups, indent=2))
    else:
        print_table(["GROUP", "RUNS"], [[f"@{g}", ", ".join(runs)] for g, runs in groups.items()])


STATUS_CHOICE = click.Choice([s.value for s in JobStatus], case_sensitive=False)


@list_.command("jobs")
@click.argument("name", required=False, shell_complete=complete_runs)
@lab_options
@click.option("--run", "run_name", help="Only jobs of this run (same as the NAME argument).")
@click.option("-s", "--stage", help="Only jobs whose stage name contains this.")
@click.option("--status", "wanted_status", type=STATUS_CHOICE, multiple=True,
              help="Only jobs in this state; repeat for several (their union).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY[=VALUE]",
              help="KEY: show the job's effective KEY as a column (as upstream). KEY=VALUE: only jobs with that value. Repeatable.")
@click.option("-g", "--group-by-stage", is_flag=True, help="Order jobs by stage, one block per stage.")
@click.option("--output-paths", is_flag=True, help="Show each job's output directory.")
@click.option("--json", "as_json", is_flag=True)
def list_jobs(name=None, run_name=None, stage=None, wanted_status=(), params=(), group_by_stage=False,
              output_paths=False, as_json=False, **kw) -> None:
    """Jobs with their run, stage, status and parameters. NAME: a run, @group or run-name prefix."""
    session = open_view(**kw)
    lab = session.lab
    runs = runs_named(lab, name or run_name) if name or run_name else sorted(lab.runs)
    columns, wanted = [], {}
    for item in params:
        key, sep, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"{item!r} names no parameter; give KEY (a column) or KEY=VALUE (a filter)", param_hint="--param")
        if sep:
            wanted[key] = value
        else:
            columns.append(key)
    effective = effective_params(lab) if columns else {}
    state = all_statuses(session)
    wanted_states = {s.lower() for s in wanted_status}
    rows = []
    for run in runs:
        for job_id in sorted(lab.runs[run].job_ids):
            job = lab.jobs[job_id]
            if stage and stage not in job.name:
                continue
            if wanted_states and state[job_id].value.lower() not in wanted_states:
                continue
            if any(key not in job.params or _param_text(job.params[key]) != value for key, value in wanted.items()):
                continue
            row = {"id": job_id, "run": job.run, "stage": job.name, "stage_type": job.stage_type,
                   "status": state[job_id].value, "params": job.params}
            if columns:
                row["shown_params"] = {k: effective[job_id][k][0] if k in effective[job_id] else None for k in columns}
            if output_paths:
                row["output_path"] = str(session.layout.job_root(job_id) / "out")
            rows.append(row)
    if group_by_stage:
        rows.sort(key=lambda r: (r["stage"], r["run"], r["id"]))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ["JOB", "RUN", "STAGE", "STATUS"] + [k.upper() for k in columns] + (["OUTPUT"] if output_paths else [])
    if not columns:
        header.append("PARAMS")
    table = []
    for r in rows:
        line = [r["id"], r["run"], r["stage"], r["status"]]
        line += ["-" if v is None else _param_text(v) for v in r.get("shown_params", {}).values()]
        line += [r["output_path"]] if output_paths else []
        line += [] if columns else [json.dumps(r["params"], separators=(",", ":"))]
        table.append(line)
    print_table(header, table)


def _param_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@list_.command("dependencies")
@click.argument("job", shell_complete=complete_jobs)
@lab_options
@click.option("--json", "as_json", is_flag=True)
def list_deps(job, as_json, **kw) -> None:
    """A job's direct dependencies and dependents, and the runs it starts after (alias: deps);
    the same relations `viz` draws."""
    session = open_view(**kw)
    lab = session.lab
    job_id = one_job(lab, job)
    state = all_statuses(session)
    dependents = sorted(dependents_map(lab, lab.jobs)[job_id])
    after_runs = runs_waited_for(lab, job_id)
    if as_json:
        click.echo(json.dumps({"job": job_id, "dependencies": list(lab.jobs[job_id].deps), "dependents": dependents,
                               "after_runs": after_runs}, indent=2))
        return
    rows = [["depends on", d, state[d].value] for d in lab.jobs[job_id].deps]
    for run, kind in sorted(after_runs.items()):
        members = lab.runs[run].job_ids
        done = sum(1 for j in members if state[j] is JobStatus.SUCCEEDED)
        rows.append([f"after run ({kind})", run, f"{done}/{len(members)} succeeded"])
    rows += [["needed by", d, state[d].value] for d in dependents]
    click.echo(job_id)
    print_table(["RELATION", "JOB", "STATUS"], rows)


list_.add_command(list_deps, "deps")
