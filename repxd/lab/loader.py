"""Loading Labs (lab-format §1–4), from a directory or a `.tar` of one: the manifest, the run
metadata, the jobs and their dependencies, with every check a Lab must pass.

Every problem becomes one `LabError` sentence naming the file and the fix."""

from __future__ import annotations

import gc
import os
from collections import deque
from pathlib import Path, PurePosixPath

from ..errors import LabError
from .json_files import parse_manifest, parse_model, parse_run
from .lab_paths import PlainTree, check_relative, find_manifest, lab_file, probe, relative_name
from .model import Job, Lab, Run
from .schema import RootMetadata
from .specs import JobSpec, Manifest, RunSpec
from .tar_lab import unpack_tar_lab
from .verification import verify_files


def load_lab(path: str | os.PathLike, *, verify: bool = True, unpack_dir: Path | None = None) -> Lab:
    """Load the Lab at `path` (a directory or a `.tar`); tar Labs are unpacked into `unpack_dir`."""
    # Loading allocates millions of long-lived objects and no garbage cycles; with the cyclic GC on,
    # its collections rescan the growing heap again and again (a quarter of the time at 100k jobs).
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_lab(Path(path), verify, unpack_dir)
    finally:
        if gc_enabled:
            gc.enable()


def _load_lab(path: Path, verify: bool, unpack_dir: Path | None) -> Lab:
    if not probe(path.exists):
        raise LabError(f"Lab not found: {path} does not exist (pass the directory `nix build` produced, or its .tar)")
    if path.is_file():
        if unpack_dir is None:
            raise LabError(f"{path} is a tar Lab; an unpack directory is needed to run it")
        path = unpack_tar_lab(path, unpack_dir)
    root = path.resolve()
    manifest_path = find_manifest(root)
    manifest = parse_manifest(manifest_path, root)
    listed_in = f"{relative_name(manifest_path, root)} lists"
    for rel in manifest.paths():
        check_relative(rel, listed_in)
    if verify:
        verify_files(root, manifest)
    root_meta_path = lab_file(root, manifest.metadata, "the manifest's `metadata`")
    root_meta = parse_model(RootMetadata, root_meta_path, root)
    return _assemble(root, manifest, root_meta)


def _assemble(root: Path, manifest: Manifest, root_meta: RootMetadata) -> Lab:
    runs: dict[str, Run] = {}
    run_metas: dict[str, RunSpec] = {}
    path_to_run: dict[str, str] = {}
    for rel in root_meta.runs:
        meta_path = lab_file(root, rel, "revision/metadata-top.json `runs`")
        meta = parse_run(meta_path, root)
        if meta.name in run_metas:
            raise LabError(f"{rel}: run name {meta.name!r} is used twice; each run needs its own name")
        run_metas[meta.name] = meta
        path_to_run[rel] = meta.name
    run_paths = {name: rel for rel, name in path_to_run.items()}

    specs: dict[str, tuple[str, JobSpec]] = {}
    warnings: list[str] = []
    for run_name, meta in run_metas.items():
        deps: dict[str, str] = {}
        for dep_path, kind in meta.dependencies.items():
            dep_run = path_to_run.get(dep_path) or (dep_path if dep_path in run_metas else None)
            if dep_run is None:
                # A per-run Lab (upstream's `runs.<name>`) keeps its run's dependencies but not the
                # runs themselves; upstream loads it and leaves their metadata inputs out.
                warnings.append(f"run {run_name!r} depends on {dep_path!r}, which this Lab does not contain "
                                "(a per-run Lab?); inputs from that run are left out")
                continue
            deps[dep_run] = "soft" if kind == "soft" else "hard"
        if meta.image is not None:
            check_relative(meta.image, f"run {run_name!r} image")
            image_dir = root / meta.image
            if not (probe((image_dir / "manifest.json").is_file) or probe((image_dir / "image" / "manifest.json").is_file)):
                raise LabError(f"run {run_name!r}: image directory {meta.image} has no manifest.json")
        runs[run_name] = Run(run_name, run_paths[run_name], deps, meta.image, list(meta.jobs))
        for job_id, spec in meta.jobs.items():
            if job_id in specs:
                raise LabError(f"job {job_id} appears in runs {specs[job_id][0]!r} and {run_name!r}; job ids must be unique")
            specs[job_id] = (run_name, spec)
            _check_output_templates(job_id, spec)

    absent_runs = sorted({m.source_run for _, spec in specs.values() for exe in spec.executables.values()
                          for m in exe.inputs if m.source_run and m.source_run not in runs})
    for absent in absent_runs:
        warnings.append(f"jobs take the metadata of run {absent!r}, which this Lab does not contain "
                        "(a per-run Lab?); that input is left out, as upstream does")
    jobs = _resolve_dependencies(specs)
    _check_job_files(root, jobs)
    _check_acyclic(jobs)

    groups = dict(root_meta.groups)
    for group, members in groups.items():
        for member in members:
            if member not in runs:
                raise LabError(f"group {group!r} names run {member!r}, which is not a run of this Lab")
    return Lab(root, manifest, root_meta, runs, jobs, groups, warnings)


def _check_output_templates(job_id: str, spec: JobSpec) -> None:
    """An output template names a path inside the job's `$out` (upstream's rule: it starts with
    `$out/`); `..`, an absolute path or `$outer/` would hand a dependant (and `show output`) a
    path anywhere on the machine."""
    for exe_name, exe in spec.executables.items():
        for name, template in exe.outputs.items():
            if not isinstance(template, str) or (template.startswith("$out/") and ".." not in template):
                continue  # the common case, decided without building a PurePosixPath per output
            if not template.startswith("$out/") or ".." in PurePosixPath(template).parts:
                raise LabError(f"job {job_id} ({exe_name}) output {name!r} is {template!r}, which leaves $out; "
                               "output paths must stay inside the job's $out")


def _resolve_dependencies(specs: dict[str, tuple[str, JobSpec]]) -> dict[str, Job]:
    """Each job's dependencies (hard ones in mapping order, then soft ones sorted), one Job each."""
    jobs: dict[str, Job] = {}
    for job_id, (run_name, spec) in specs.items():
        hard: list[str] = []
        soft: set[str] = set()
        for exe_name, exe in spec.executables.items():
            for mapping in exe.inputs:
                dep = mapping.job_id
                if dep is None or dep == "self":
                    continue
                if dep not in specs:
                    raise LabError(
                        f"job {job_id} ({exe_name}) maps input {mapping.target_input!r} from job {dep}, "
                        "which is not in this Lab; rebuild the Lab so every referenced job is included"
                    )
                if mapping.dependency_type == "soft":
                    soft.add(dep)
                elif dep not in hard:
                    hard.append(dep)
        if soft:
            soft -= set(hard)
            jobs[job_id] = Job(job_id, run_name, spec, tuple(hard) + tuple(sorted(soft)), frozenset(soft))
        else:
            jobs[job_id] = Job(job_id, run_name, spec, tuple(hard))
    return jobs


def _check_job_files(root: Path, jobs: dict[str, Job]) -> None:
    plain = PlainTree(root)
    plain.scan("jobs")
    for job_id, job in jobs.items():
        check_relative(job_id, "job id")
        job_dir = f"jobs/{job_id}"
        if not (job_dir in plain.dirs or plain.is_dir(job_dir) or probe((root / "jobs" / job_id).is_dir)):
            raise LabError(f"job {job_id} has no directory jobs/{job_id} in the Lab; the Lab is incomplete")
        executables = job.spec.executables
        for exe_name, exe in executables.items():
            exe_path = plain.file(exe.path) or lab_file(root, exe.path, f"job {job_id} executable {exe_name!r}")
            if not os.access(exe_path, os.X_OK):
                raise LabError(f"job {job_id} executable {exe.path} is not executable (mode {os.stat(exe_path).st_mode & 0o777:o})")
        if job.spec.stage_type == "scatter-gather":
            names = set(executables)
            if not {"scatter", "gather"} <= names or not any(n.startswith("step-") for n in names):
                raise LabError(f"scatter-gather job {job_id} needs executables scatter, step-<name> and gather; it has {sorted(names)}")
            for exe_name, exe in executables.items():
                for dep in exe.deps:
                    if f"step-{dep}" not in names and dep not in names:
                        raise LabError(f"job {job_id} step {exe_name!r} depends on unknown step {dep!r}")


def _check_acyclic(jobs: dict[str, Job]) -> None:
    indegree = {job_id: len(job.deps) for job_id, job in jobs.items()}
    dependents: dict[str, list[str]] = {job_id: [] for job_id in jobs}
    for job_id, job in jobs.items():
        for dep in job.deps:
            dependents[dep].append(job_id)
    queue = deque(j for j, n in indegree.items() if n == 0)
    seen = 0
    while queue:
        current = queue.popleft()
        seen += 1
        for child in dependents[current]:
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if seen != len(jobs):
        cycle = sorted(j for j, n in indegree.items() if n > 0)
        shown = ", ".join(cycle[:4]) + (" …" if len(cycle) > 4 else "")
        raise LabError(f"the jobs' dependencies form a cycle ({len(cycle)} jobs involved: {shown}); a Lab must be a DAG")
