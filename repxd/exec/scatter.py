"""Scatter-gather jobs (lab-format §7): scatter, a step DAG per work item, gather."""

from __future__ import annotations

import asyncio
import json
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from ..lab.model import Job
from .inputs import resolve_inputs
from .job import JobContext, JobResult, exit_reason, finish, run_step, script_path
from .launcher import ExitStatus
from .layout import (
    FAIL,
    SUCCESS,
    Preparation,
    clear_markers,
    read_job_file,
    write_json,
    write_marker,
)

# The work items file is read whole; beyond this it is refused (the count's bound is ctx.max_work_items).
MAX_WORK_ITEMS_BYTES = 16 << 20


def _step_order(job: Job) -> list[str]:
    graph = {name[5:]: set(exe.deps) for name, exe in job.executables.items() if name.startswith("step-")}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError:
        raise ValueError(f"the steps of {job.id} form a cycle") from None


async def execute_scatter_gather(ctx: JobContext, job: Job) -> JobResult:
    layout = ctx.layout
    root, repx, out = layout.job_root(job.id), layout.repx_dir(job.id), layout.out_dir(job.id)
    repx.mkdir(parents=True, exist_ok=True)
    clear_markers(repx)
    static_inputs = resolve_inputs(ctx.lab, job, layout)
    write_json(repx / "inputs.json", static_inputs)
    write_json(repx / "parameters.json", job.spec.params)
    inputs_json, params_json = repx / "inputs.json", repx / "parameters.json"

    scatter_out, scatter_repx = root / "scatter" / "out", root / "scatter" / "repx"
    items_path = scatter_out / "work_items.json"
    if not ((scatter_repx / SUCCESS).exists() and items_path.exists()):
        status = await run_step(ctx, script_path(ctx, job.executables["scatter"].path), scatter_out,
                                scatter_repx, inputs_json, params_json,
                                prepare=Preparation(scatter_out, scatter_repx, ctx.run_as is None),
                                record=lambda status: _record_step(ctx, scatter_repx, status, items_path),
                                done=lambda: 0 if (scatter_repx / SUCCESS).exists() and items_path.exists() else None)
        if status != 0:
            return finish(ctx, job.id, repx, False, f"scatter {exit_reason(status)} (see scatter/repx/stderr.log)")
        if not items_path.exists():
            return finish(ctx, job.id, repx, False, "scatter succeeded but wrote no $out/work_items.json")
    try:
        # The scatter wrote this file: it may be a FIFO or huge, so it is read off the event loop,
        # without blocking and within bounds.
        data = await asyncio.to_thread(read_job_file, items_path, MAX_WORK_ITEMS_BYTES)
        items = await asyncio.to_thread(_parse_work_items, data, ctx.max_work_items)
    except RecursionError:
        return finish(ctx, job.id, repx, False, "scatter/out/work_items.json is invalid: nested too deeply")
    except (ValueError, OSError) as exc:
        return finish(ctx, job.id, repx, False, f"scatter/out/work_items.json is invalid: {exc}")

    order = _step_order(job)
    failure, stopped = await _run_branches(ctx, job, root, items, order, static_inputs, params_json)
    if failure:
        also = f"; {stopped} other branch{'es' if stopped != 1 else ''} stopped" if stopped else ""
        return finish(ctx, job.id, repx, False, f"a branch of {len(items)} failed: {failure}{also}")

    sink = _sink_step(job, order)
    sink_outputs = job.executables[f"step-{sink}"].outputs
    manifest = [{name: _resolve(tmpl, root / f"branch-{i}" / f"step-{sink}" / "out")
                 for name, tmpl in sink_outputs.items()} for i in range(len(items))]
    gather_inputs = dict(static_inputs)
    gather_inputs["worker__outs"] = str(repx / "worker_outs_manifest.json")
    for mapping in job.executables["gather"].inputs:
        if mapping.job_id == "self" and mapping.source_output:
            template = job.executables["scatter"].outputs.get(mapping.source_output, "")
            gather_inputs[mapping.target_input] = _resolve(template, scatter_out)

    prepare_gather = Preparation(out, repx, ctx.run_as is None,
                                 {"worker_outs_manifest.json": manifest, "gather_inputs.json": gather_inputs})
    return await run_step(
        ctx, script_path(ctx, job.executables["gather"].path), out, repx, repx / "gather_inputs.json",
        params_json, prepare=prepare_gather,
        record=lambda status: finish(ctx, job.id, repx, status == 0, None if status == 0 else f"gather {exit_reason(status)}"),
        done=lambda: JobResult(job.id, True) if (repx / SUCCESS).exists() else None)


async def _run_branches(ctx: JobContext, job: Job, root: Path, items: list, order: list[str],
                        static_inputs: dict[str, str], params_json: Path) -> tuple[str | None, int]:
    """Every branch at once; the first failure stops the others (their processes killed, their
    cluster jobs cancelled): the stage has failed, and what they would compute is not used.
    Returns (the first failure, how many branches were stopped)."""
    tasks = [asyncio.create_task(_run_branch(ctx, job, root / f"branch-{i}", item, order, static_inputs, params_json))
             for i, item in enumerate(items)]
    failure = None
    try:
        for finished in asyncio.as_completed(tasks):
            failure = await finished
            if failure:
                break
    finally:
        stopped = sum(task.cancel() for task in tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
    return failure, stopped


def _resolve(template, out: Path):
    """A path template with `$out` filled in; other JSON values (upstream's outputs may be any,
    e.g. the scatter's `worker__arg` object) pass through unchanged."""
    return template.replace("$out", str(out)) if isinstance(template, str) else template


_SPACE = re.compile(r"\s*")


def _parse_work_items(data: bytes, bound: int) -> list:
    """The JSON array of work items, decoded one item at a time so that a flood of small items
    stops at the bound instead of first becoming millions of objects."""
    text = data.decode()
    decoder = json.JSONDecoder()
    at = _SPACE.match(text).end()
    if not text.startswith("[", at):
        raise ValueError("not a JSON array")
    at = _SPACE.match(text, at + 1).end()
    items: list = []
    while not text.startswith("]", at):
        if items:
            if not text.startswith(",", at):
                raise ValueError(f"expected ',' or ']' at character {at}")
            at = _SPACE.match(text, at + 1).end()
        item, at = decoder.raw_decode(text, at)
        items.append(item)
        if len(items) > bound:
            raise ValueError(f"more than the {bound} work items a stage may have (agent.max_work_items)")
        at = _SPACE.match(text, at).end()
    if _SPACE.match(text, at + 1).end() != len(text):
        raise ValueError(f"extra data after the array at character {at + 1}")
    return items


def _previous_item(path: Path) -> bytes | None:
    try:
        return read_job_file(path, MAX_WORK_ITEMS_BYTES)
    except (ValueError, OSError):
        return None


def _record_step(ctx: JobContext, repx: Path, status: ExitStatus, required: Path | None = None) -> ExitStatus:
    """Markers of a scatter or step process; a scatter without work items is not a success."""
    ok = status == 0 and (required is None or required.exists())
    write_marker(repx, SUCCESS if ok else FAIL)
    ctx.marked(repx, SUCCESS if ok else FAIL)
    return status


def _sink_step(job: Job, order: list[str]) -> str:
    depended = {d for name, exe in job.executables.items() if name.startswith("step-") for d in exe.deps}
    sinks = [s for s in order if s not in depended]
    return sinks[-1]


async def _run_branch(ctx: JobContext, job: Job, branch: Path, item, order: list[str],
                      static_inputs: dict[str, str], params_json: Path) -> str | None:
    """Run one branch's steps in order; returns a failure description or None."""
    branch_repx = branch / "repx"
    branch_repx.mkdir(parents=True, exist_ok=True)
    item_path = branch_repx / "work_item.json"
    item_json = json.dumps(item, separators=(",", ":"))
    if item_path.exists() and _previous_item(item_path) != item_json.encode():
        for marker in branch.glob(f"step-*/repx/{SUCCESS}"):
            marker.unlink()  # a changed work item invalidates the branch's finished steps
    item_path.write_text(item_json)
    for step in order:
        exe = job.executables[f"step-{step}"]
        step_out, step_repx = branch / f"step-{step}" / "out", branch / f"step-{step}" / "repx"
        if (step_repx / SUCCESS).exists():
            continue
        inputs: dict[str, str] = {}
        for mapping in exe.inputs:
            source = mapping.source or ""
            if source == "scatter:work_item":
                inputs[mapping.target_input] = str(item_path)
            elif source.startswith("step:") and mapping.source_output:
                dep = source[5:]
                template = job.executables[f"step-{dep}"].outputs.get(mapping.source_output, "")
                inputs[mapping.target_input] = _resolve(template, branch / f"step-{dep}" / "out")
            elif mapping.job_id and mapping.target_input in static_inputs:
                inputs[mapping.target_input] = static_inputs[mapping.target_input]
        prepare = Preparation(step_out, step_repx, ctx.run_as is None, {"inputs.json": inputs})
        status = await run_step(ctx, script_path(ctx, exe.path), step_out, step_repx,
                                step_repx / "inputs.json", params_json, prepare=prepare,
                                resources=ctx.step_resources(exe.resource_hints.model_dump(exclude_none=True)
                                                             if exe.resource_hints else {}),
                                record=lambda status, step_repx=step_repx: _record_step(ctx, step_repx, status),
                                done=lambda step_repx=step_repx: 0 if (step_repx / SUCCESS).exists() else None)
        if status != 0:
            return f"{branch.name} step {step} {exit_reason(status)} (see {branch.name}/step-{step}/repx/stderr.log)"
    return None
