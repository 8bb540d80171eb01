"""Write Labs in the upstream format from Python, with upstream's job ids (lab-format §1–4, §11).

Used by the tests, the benchmarks and `examples/labs/`. A Lab is described with `LabWriter`,
`RunWriter.job` and `RunWriter.scatter_gather`, then written with `LabWriter.write`:

    lab = LabWriter()
    sim = lab.run("simulation")
    a = sim.job("produce", PRODUCE_SH, params={"n": 3}, outputs={"data": "$out/numbers.txt"})
    sim.job("total", TOTAL_SH, inputs={"numbers": a.output("data")}, outputs={"sum": "$out/sum.txt"})
    lab.write(Path("my-lab"))
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ids import compact_json, job_hash, ordered_mapping

REPX_VERSION = "0.5.0"
CONTAINER_MODES = ("per-run", "unified", "none")  # upstream's mkLab `containerMode` values


@dataclass(frozen=True)
class JobOutput:
    """An input wired from another job's named output."""

    job: JobRef
    output: str


@dataclass(frozen=True)
class JobRef:
    id: str
    pname: str
    outputs: tuple[str, ...]

    def output(self, name: str) -> JobOutput:
        if name not in self.outputs:
            raise ValueError(f"job {self.id} has no output {name!r} (it has {list(self.outputs)})")
        return JobOutput(self, name)


@dataclass
class Step:
    """One step of a scatter-gather stage. Inputs: "worker__item" (the work item), or
    `StepOutput`, or a `JobOutput` from outside the stage."""

    script: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    resources: dict[str, Any] | None = None  # the step's own `resource_hints`


@dataclass(frozen=True)
class StepOutput:
    step: str
    output: str


WORK_ITEM = "worker__item"


def sweep(**axes: list[Any]) -> list[dict[str, Any]]:
    """The cartesian product of parameter axes: sweep(a=[1, 2], b=["x"]) -> [{a:1,b:x}, {a:2,b:x}]."""
    names = sorted(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def _mapping(**keys: Any) -> dict[str, Any]:
    return dict(sorted(ordered_mapping(keys).items()))


@dataclass
class _JobEntry:
    dir_name: str
    metadata: dict[str, Any]
    files: dict[str, tuple[bytes, int]]  # path inside jobs/<dir>/ -> (content, mode)
    deps: list[str]
    # What the id was hashed from, kept to hash it again for a per-run Lab.
    identities: list[str]
    params: dict[str, Any]
    mappings: list[dict[str, Any]]

    def producers(self) -> list[str]:
        """The hashed dependencies that come from intra-pipeline mappings (the rest are other runs' jobs)."""
        return self.deps[:sum(m["type"] == "intra-pipeline" for m in self.mappings)]


class RunWriter:
    def __init__(self, lab: LabWriter, name: str, image: ImageSpec | None) -> None:
        self._lab = lab
        self.name = name
        self.image = image
        self.dependencies: dict[str, str] = {}
        self.jobs: dict[str, _JobEntry] = {}
        # Every job as added, repeats included: upstream's expansion order, whose list of job
        # directories a dependent run's first stages hash as their dependencies.
        self.expansion: list[str] = []

    def depends_on(self, other: RunWriter, kind: str = "hard") -> None:
        """An inter-run dependency: this run's first stages get `metadata__<other>` and `store__base`.
        Declare it before adding this run's jobs and after adding all of `other`'s: those inputs,
        and `other`'s job directories, are part of a first stage's identity (upstream expands
        runs in dependency order)."""
        if self.jobs:
            raise ValueError(f"run {self.name!r}: call depends_on() before adding jobs")
        self.dependencies[other.name] = kind

    def _inter_run_mappings(self, wants_inter_run: bool) -> tuple[list[dict[str, Any]], list[str]]:
        """A first stage's implicit inputs as upstream's process-dependencies.nix lists them (per
        run, by name: `metadata__<run>`, then `store__base` once), and its hashed dependencies:
        every job directory of each such run, in expansion order, repeats included (repx-expand)."""
        mappings: list[dict[str, Any]] = []
        deps: list[str] = []
        if not wants_inter_run:
            return mappings, deps
        store_base = _mapping(type="global", source_value="store_base", target_input="store__base")
        for run_name, kind in sorted(self.dependencies.items()):
            mappings.append(_mapping(type="inter-run", source_run=run_name, dependency_type=kind, target_input=f"metadata__{run_name}"))
            if store_base not in mappings:
                mappings.append(store_base)
            deps += self._lab.runs[run_name].expansion
        return mappings, deps

    def _stage_mappings(self, inputs: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The stage's input mappings in the order declared, as upstream hashes them (the producer
        named by `job_id_template`, its pname; `job_id` not yet set), and the hashed dependencies:
        the producer's directory once per mapping, repeats included, as repx-expand lists them."""
        mappings, deps = [], []
        for target, source in inputs.items():
            if isinstance(source, JobOutput):
                mappings.append(_mapping(type="intra-pipeline", job_id_template=source.job.pname,
                                         source_output=source.output, target_input=target))
                deps.append(source.job.id)
        inter_run, inter_run_deps = self._inter_run_mappings(not deps)
        return mappings + inter_run, deps + inter_run_deps

    @staticmethod
    def _resolved(mappings: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """The mappings as the run metadata lists them: `job_id` filled in with the producer's directory."""
        return [dict(m, job_id=inputs[m["target_input"]].job.id) if m["job_id_template"] else m for m in mappings]

    def job(self, pname: str, script: str, *, version: str = "1.0", params: dict[str, Any] | None = None,
            inputs: dict[str, JobOutput] | None = None, outputs: dict[str, str] | None = None,
            resources: dict[str, Any] | None = None) -> JobRef:
        """A simple stage job running `script` as `<script> OUT_DIR INPUTS_JSON PARAMETERS_JSON`."""
        params = params or {}
        inputs = inputs or {}
        outputs = outputs or {}
        mappings, deps = self._stage_mappings(inputs)
        short = job_hash([f"{pname}-{version}"], params, deps, mappings)
        dir_name = f"{short}-{pname}-{version}"
        exe = {"inputs": self._resolved(mappings, inputs), "outputs": dict(sorted(outputs.items())), "path": f"jobs/{dir_name}/bin/{pname}"}
        meta = {"name": f"{pname}-{version}", "stage_type": "simple", "params": params, "executables": {"main": exe}}
        if resources:
            meta["resource_hints"] = resources
        files = {f"bin/{pname}": (script.encode(), 0o755)}
        self._add(dir_name, meta, files, deps, params, [f"{pname}-{version}"], mappings)
        return JobRef(dir_name, pname, tuple(outputs))

    def scatter_gather(self, pname: str, *, scatter: str, steps: dict[str, Step], gather: str,
                       version: str = "1.0", params: dict[str, Any] | None = None,
                       inputs: dict[str, JobOutput] | None = None, outputs: dict[str, str] | None = None,
                       resources: dict[str, Any] | None = None, worker_arg: Any = None,
                       scatter_resources: dict[str, Any] | None = None,
                       gather_resources: dict[str, Any] | None = None) -> JobRef:
        """A scatter-gather stage in the shape of upstream's stage-scatter-gather.nix: `scatter`
        declares the outputs `worker__arg` (any JSON value, default `{}`) and `work__items`
        (`$out/work_items.json`); each item runs the step DAG; `gather` gets `worker__outs`
        (the sink step's outputs, one {output: path} object per branch) and writes `outputs`.
        Every executable carries its `resource_hints` (null when not given), as upstream's do."""
        params = params or {}
        inputs = inputs or {}
        outputs = outputs or {}
        stage_mappings, deps = self._stage_mappings(inputs)
        ext_mappings = self._resolved(stage_mappings, inputs)
        scatter_outputs = {"work__items": "$out/work_items.json", "worker__arg": {} if worker_arg is None else worker_arg}
        executables: dict[str, Any] = {
            "scatter": {"inputs": ext_mappings, "outputs": scatter_outputs, "path": "",
                        "resource_hints": scatter_resources},
        }
        identities = [f"{pname}-scatter-{version}"]
        for step_name in sorted(steps):
            step = steps[step_name]
            step_mappings = []
            for target, source in sorted(step.inputs.items()):
                if source == WORK_ITEM:
                    step_mappings.append(_mapping(source="scatter:work_item", target_input=target))
                elif isinstance(source, StepOutput):
                    step_mappings.append(_mapping(source=f"step:{source.step}", source_output=source.output, target_input=target))
                elif isinstance(source, JobOutput) and inputs.get(target) == source:
                    # upstream hands a step the stage's own mapping for that input name
                    step_mappings.extend(m for m in ext_mappings if m["target_input"] == target)
                else:
                    raise ValueError(f"step {step_name!r} input {target!r}: use WORK_ITEM, StepOutput, "
                                     "or the JobOutput the stage takes under the same input name")
            entry: dict[str, Any] = {"inputs": step_mappings, "outputs": dict(sorted(step.outputs.items())), "path": "",
                                     "resource_hints": step.resources}
            if step.deps:
                entry["deps"] = sorted(step.deps)
            executables[f"step-{step_name}"] = entry
            identities.append(f"{pname}-step-{step_name}-{version}")
        identities.append(f"{pname}-gather-{version}")
        sinks = [n for n in steps if not any(n in other.deps for other in steps.values())]
        if len(sinks) != 1 or len(steps[sinks[0]].outputs) != 1:
            raise ValueError(f"stage {pname!r}: exactly one sink step with exactly one output is needed (sinks: {sinks})")
        sink_output = next(iter(steps[sinks[0]].outputs))
        executables["gather"] = {
            "inputs": [_mapping(source="runner:worker_outputs", source_key=sink_output, target_input="worker__outs")],
            "outputs": dict(sorted(outputs.items())),
            "path": "",
            "resource_hints": gather_resources,
        }
        short = job_hash(identities, params, deps, stage_mappings)
        dir_name = f"{short}-{pname}-{version}"
        files = {f"bin/{pname}-scatter": (scatter.encode(), 0o755), f"bin/{pname}-gather": (gather.encode(), 0o755)}
        executables["scatter"]["path"] = f"jobs/{dir_name}/bin/{pname}-scatter"
        executables["gather"]["path"] = f"jobs/{dir_name}/bin/{pname}-gather"
        for step_name, step in steps.items():
            files[f"bin/{pname}-step-{step_name}"] = (step.script.encode(), 0o755)
            executables[f"step-{step_name}"]["path"] = f"jobs/{dir_name}/bin/{pname}-step-{step_name}"
        executables = {name: dict(sorted(exe.items())) for name, exe in sorted(executables.items())}
        meta = {"name": f"{pname}-{version}", "stage_type": "scatter-gather", "params": params, "executables": executables}
        if resources:
            meta["resource_hints"] = resources
        self._add(dir_name, meta, files, deps, params, identities, stage_mappings)
        return JobRef(dir_name, pname, tuple(outputs))

    def _add(self, dir_name: str, meta: dict[str, Any], files: dict[str, tuple[bytes, int]], deps: list[str],
             params: dict[str, Any], identities: list[str], mappings: list[dict[str, Any]]) -> None:
        files[f"{meta['name'].rsplit('-', 1)[0]}-parameters.json"] = (compact_json(params).encode(), 0o644)
        self.jobs[dir_name] = _JobEntry(dir_name, meta, files, deps, identities, params, mappings)
        self.expansion.append(dir_name)

    def entries_alone(self) -> list[_JobEntry]:
        """This run's jobs as upstream's per-run Lab (`runs.<name>`) has them: expanded alone, a
        first stage hashes no other run's jobs, so its id, and each id after it, can differ from
        the full Lab's. Job directory names are replaced throughout the metadata."""
        renamed: dict[str, str] = {}
        entries = []
        for old, entry in self.jobs.items():
            deps = [renamed[d] for d in entry.producers()]
            renamed[old] = f"{job_hash(entry.identities, entry.params, deps, entry.mappings)}-{old.split('-', 1)[1]}"
            text = json.dumps(entry.metadata)
            for before, after in renamed.items():
                text = text.replace(before, after)
            entries.append(_JobEntry(renamed[old], json.loads(text), entry.files, deps, entry.identities,
                                     entry.params, entry.mappings))
        return entries


@dataclass(frozen=True)
class ImageSpec:
    """A container image from a root filesystem directory, stored as an unpacked docker-archive."""

    rootfs: Path
    tag: str = "repx-job:latest"


class LabWriter:
    def __init__(self, git_hash: str = "0" * 40, repx_version: str = REPX_VERSION) -> None:
        self.git_hash = git_hash
        self.repx_version = repx_version
        self.runs: dict[str, RunWriter] = {}
        self.groups: dict[str, list[str]] = {}

    def run(self, name: str, image: ImageSpec | None = None) -> RunWriter:
        if name in self.runs:
            raise ValueError(f"run {name!r} exists already")
        self.runs[name] = RunWriter(self, name, image)
        return self.runs[name]

    def group(self, name: str, runs: list[RunWriter]) -> None:
        self.groups[name] = [r.name for r in runs]

    def write(self, dest: Path, *, only_run: str | None = None, container_mode: str = "per-run") -> Path:
        """Write the Lab directory at `dest` (replaced if it exists); returns `dest`.

        `only_run` writes one of upstream's per-run Labs (`mkLab … runs.<name>`): that run alone,
        no groups, its jobs still taking the other runs' metadata as inputs. `container_mode` is
        upstream's: "per-run" (an image per run), "unified" (the runs with an image share one,
        made from the first run's), "none" (no images)."""
        if container_mode not in CONTAINER_MODES:
            raise ValueError(f"container_mode must be one of {CONTAINER_MODES}")
        if only_run is not None and only_run not in self.runs:
            raise ValueError(f"no run {only_run!r}")
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "lab").mkdir(parents=True)
        (dest / "revision").mkdir()
        (dest / "readme").mkdir()
        (dest / "readme" / "README.md").write_text("# Lab written by repxd.lab.writer\n")
        runs = [self.runs[only_run]] if only_run else list(self.runs.values())
        shared = next((r.image for r in runs if r.image), None)
        run_paths = {}
        for run in runs:
            image = None if container_mode == "none" else shared if container_mode == "unified" and run.image else run.image
            name = "repx-shared-image" if container_mode == "unified" else None
            image_rel = _write_image(dest, image, name) if image else None
            entries = run.entries_alone() if only_run else list(run.jobs.values())
            for entry in entries:
                job_dir = dest / "jobs" / entry.dir_name
                job_dir.mkdir(parents=True, exist_ok=True)
                # the very list that was hashed, as upstream's io.rs writes it
                (job_dir / "nix-input-dependencies.json").write_text(json.dumps(entry.deps, separators=(",", ":")))
                for rel, (content, mode) in entry.files.items():
                    path = job_dir / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                    path.chmod(mode)
            # As upstream's expand step: only dependencies on runs this Lab contains are listed.
            present = {r.name for r in runs}
            run_meta: dict[str, Any] = {"type": "run", "name": run.name, "gitHash": self.git_hash,
                                        "dependencies": {f"revision/metadata-{d}.json": k for d, k in sorted(run.dependencies.items())
                                                         if d in present}}
            if image_rel:
                run_meta["image"] = image_rel
            run_meta["jobs"] = {e.dir_name: e.metadata for e in entries}
            run_paths[run.name] = f"revision/metadata-{run.name}.json"
            (dest / run_paths[run.name]).write_text(json.dumps(run_meta, indent=2))
        top = {"repx_version": self.repx_version, "type": "root", "gitHash": self.git_hash, "runs": list(run_paths.values())}
        if self.groups and only_run is None:
            top["groups"] = self.groups
        (dest / "revision" / "metadata-top.json").write_text(json.dumps(top, indent=2))
        files = _hash_tree(dest)
        lab_id = hashlib.sha256(compact_json(files).encode()).hexdigest()[:32]
        manifest = {"files": files, "labId": lab_id, "lab_version": "1.0.0", "metadata": "revision/metadata-top.json"}
        (dest / "lab" / "lab-metadata.json").write_text(json.dumps(manifest, indent=1))
        return dest

    def write_tar(self, dest: Path, *, prefix: str = "result", **options: Any) -> Path:
        """Write the Lab as a tar with every member under `prefix/` (`options` as for `write`)."""
        tree = Path(str(dest) + ".d")
        self.write(tree, **options)
        with tarfile.open(dest, "w") as tf:
            tf.add(tree, arcname=prefix)
        shutil.rmtree(tree)
        return Path(dest)


def _hash_tree(root: Path) -> list[dict[str, str]]:
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.startswith("lab/"):
                continue
            files.append({"path": rel, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return sorted(files, key=lambda f: f["path"])


def _write_image(dest: Path, image: ImageSpec, name: str | None = None) -> str:
    """Pack `image.rootfs` into one layer and write the unpacked docker-archive; returns its Lab path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(image.rootfs.rglob("*")):
            info = tf.gettarinfo(str(path), arcname=path.relative_to(image.rootfs).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with open(path, "rb") as fh:
                    tf.addfile(info, fh)
            else:
                tf.addfile(info)
    layer = buf.getvalue()
    layer_hash = hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hash}"]}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_hash = hashlib.sha256(config_bytes).hexdigest()
    image_rel = f"images/{config_hash[:32]}-{name or image.tag.split(':')[0].replace('/', '-')}"
    image_dir = dest / image_rel
    if not image_dir.exists():
        (image_dir / layer_hash).mkdir(parents=True)
        (image_dir / layer_hash / "layer.tar").write_bytes(layer)
        (image_dir / f"{config_hash}.json").write_bytes(config_bytes)
        manifest = [{"Config": f"{config_hash}.json", "RepoTags": [image.tag], "Layers": [f"{layer_hash}/layer.tar"]}]
        (image_dir / "manifest.json").write_text(json.dumps(manifest))
    return image_rel
