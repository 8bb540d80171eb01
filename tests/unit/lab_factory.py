"""Small valid Labs for the loader tests, written with `repxd.lab.writer`, and helpers to break them.

`build_lab(dest)` writes a Lab with three runs:
  simulation: produce -> square -> total       (produce has resource hints)
  analysis:   report (inter-run dependency on simulation, container image)
  sweep:      generate x2 -> partition (scatter-gather) x2 -> collect
and the groups `all` (simulation, analysis) and `sweepers` (sweep).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repxd.lab.writer import WORK_ITEM, ImageSpec, LabWriter, Step, StepOutput

SCRIPT = "#!/bin/sh\nset -eu\necho ok > \"$1/out.txt\"\n"

RUNS = ("simulation", "analysis", "sweep")
GROUPS = {"all": ["simulation", "analysis"], "sweepers": ["sweep"]}
JOB_COUNT = 3 + 1 + 2 + 2 + 1
MANIFEST = "lab/lab-metadata.json"


def describe(rootfs: Path | None = None) -> LabWriter:
    """The Lab description; with `rootfs`, the analysis run gets an image built from it."""
    lab = LabWriter(git_hash="ab" * 20)
    sim = lab.run("simulation")
    produce = sim.job("produce", SCRIPT, params={"offset": 1}, outputs={"numbers": "$out/numbers.txt"},
                      resources={"mem": "64M", "cpus": 2, "time": "00:01:00"})
    square = sim.job("square", SCRIPT, inputs={"numbers": produce.output("numbers")},
                     outputs={"squares": "$out/squares.txt"})
    sim.job("total", SCRIPT, inputs={"squares": square.output("squares")}, outputs={"total": "$out/total.txt"})

    analysis = lab.run("analysis", image=ImageSpec(rootfs) if rootfs else None)
    analysis.depends_on(sim)
    analysis.job("report", SCRIPT, outputs={"report": "$out/report.txt"})

    sweep = lab.run("sweep")
    sums = {}
    for seed in (1, 2):
        data = sweep.job("generate", SCRIPT, params={"seed": seed}, outputs={"data": "$out/data.txt"})
        stage = sweep.scatter_gather(
            "partition", params={"seed": seed},
            inputs={"data": data.output("data")},
            scatter=SCRIPT,
            steps={
                "square": Step(SCRIPT, inputs={"item": WORK_ITEM}, outputs={"square": "$out/square.txt"}),
                "shift": Step(SCRIPT, inputs={"square": StepOutput("square", "square")},
                              outputs={"shifted": "$out/shifted.txt"}, deps=["square"]),
            },
            gather=SCRIPT, outputs={"sum": "$out/sum.txt"},
        )
        sums[f"sum_{seed}"] = stage.output("sum")
    sweep.job("collect", SCRIPT, inputs=sums, outputs={"summary": "$out/summary.txt"})

    lab.group("all", [sim, analysis])
    lab.group("sweepers", [sweep])
    return lab


def _rootfs(work: Path) -> Path:
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    return rootfs


def build_lab(dest: Path, *, image: bool = True) -> Path:
    """Write the Lab directory at `dest`; returns `dest`."""
    dest = Path(dest)
    rootfs = _rootfs(dest.parent / f"{dest.name}.rootfs") if image else None
    return describe(rootfs).write(dest)


def build_tar(dest: Path, *, prefix: str = "result", image: bool = True) -> Path:
    """Write the Lab as a tar at `dest` (members under `prefix/`); returns `dest`."""
    dest = Path(dest)
    rootfs = _rootfs(dest.parent / f"{dest.name}.rootfs") if image else None
    return describe(rootfs).write_tar(dest, prefix=prefix)


# ---- editing Labs ----------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2))


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    """Apply `change` to the parsed JSON at `path`; it edits the value in place (its result is ignored)."""
    data = read_json(path)
    change(data)
    write_json(path, data)


def rehash(lab: Path) -> None:
    """Recompute the manifest's `files` so a deliberately edited Lab still passes verification."""
    lab = Path(lab)
    files = []
    for path in sorted(p for p in lab.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(lab).as_posix()
        if rel.startswith("lab/"):
            continue
        files.append({"path": rel, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    edit_json(lab / MANIFEST, lambda m: m.update(files=files))


def run_meta_path(lab: Path, run: str) -> Path:
    return Path(lab) / "revision" / f"metadata-{run}.json"


def job_ids(lab: Path, run: str) -> dict[str, str]:
    """pname -> job id (the last one written, for pnames used more than once) of `run`."""
    jobs = read_json(run_meta_path(lab, run))["jobs"]
    return {job_id.split("-", 1)[1].rsplit("-", 1)[0]: job_id for job_id in jobs}


def hard_mapping(job_id: str, output: str, target: str) -> dict[str, Any]:
    """An intra-pipeline input mapping as the writer emits it (every key present)."""
    return {"dependency_type": "hard", "job_id": job_id, "job_id_template": None, "source": None,
            "source_key": None, "source_output": output, "source_run": None, "source_value": None,
            "target_input": target, "type": "intra-pipeline"}


def add_tar_member(tar: Path, name: str, *, data: bytes = b"x", symlink_to: str | None = None,
                   hardlink_to: str | None = None) -> None:
    """Append one member to an uncompressed tar."""
    import io

    info = tarfile.TarInfo(name)
    with tarfile.open(tar, "a") as tf:
        if symlink_to is not None:
            info.type, info.linkname = tarfile.SYMTYPE, symlink_to
            tf.addfile(info)
        elif hardlink_to is not None:
            info.type, info.linkname = tarfile.LNKTYPE, hardlink_to
            tf.addfile(info)
        else:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
