"""inputs.json resolution (lab-format §5): where each of a job's inputs lives under the base path."""

from __future__ import annotations

from ..errors import LabError
from ..lab.model import Job, Lab
from .layout import OutputLayout


def output_template(lab: Lab, job_id: str, output: str) -> str:
    dep = lab.jobs[job_id]
    exe = dep.executables.get("gather" if dep.is_scatter_gather else "main")
    template = exe.outputs.get(output) if exe else None
    if template is None:
        raise LabError(f"a job asks for output {output!r} of {job_id}, which does not declare it (it has {sorted(exe.outputs) if exe else []})")
    if not isinstance(template, str):
        # Upstream resolves only path templates for consumers (repx-client inputs.rs) and refuses others.
        raise LabError(f"a job asks for output {output!r} of {job_id}, which is a JSON value, not a path template like \"$out/file\"")
    return template


def resolve_output(lab: Lab, layout: OutputLayout, job_id: str, output: str) -> str:
    return output_template(lab, job_id, output).replace("$out", str(layout.out_dir(job_id)))


def resolve_inputs(lab: Lab, job: Job, layout: OutputLayout, executables: list[str] | None = None) -> dict[str, str]:
    """The flat {target_input: absolute path} object of the job's external inputs: outputs of other
    jobs, `store__base` and `metadata__<run>`. Scatter-gather-internal sources are resolved later."""
    inputs: dict[str, str] = {}
    names = executables if executables is not None else list(job.executables)
    for name in names:
        for mapping in job.executables[name].inputs:
            if mapping.job_id and mapping.job_id != "self" and mapping.source_output:
                inputs[mapping.target_input] = resolve_output(lab, layout, mapping.job_id, mapping.source_output)
            elif mapping.type == "global" or mapping.target_input == "store__base":
                inputs[mapping.target_input] = str(layout.base)
            elif mapping.source_run:
                run = lab.runs.get(mapping.source_run)
                # A per-run Lab lacks the other runs: the input is left out, as upstream does
                # (the loader has said so in `lab.warnings`).
                if run is not None:
                    inputs[mapping.target_input] = str(layout.artifacts / run.metadata_path)
    return inputs
