"""The Lab's metadata as held in memory (repxd.lab.specs): the compact decoders agree with the
pydantic models on every Lab, pydantic decides what they refuse, and the packed manifest answers
as the list of files it replaces."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
from lab_factory import (
    JOB_COUNT,
    MANIFEST,
    RUNS,
    build_lab,
    edit_json,
    read_json,
    rehash,
    run_meta_path,
)

from repxd.errors import LabError
from repxd.lab import specs
from repxd.lab.loader import load_lab
from repxd.lab.schema import Manifest as ManifestModel
from repxd.lab.schema import RunMetadata


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return build_lab(tmp_path / "lab")


@pytest.mark.parametrize("run", RUNS)
def test_fast_decoding_equals_pydantic(lab_dir: Path, run: str) -> None:
    data = run_meta_path(lab_dir, run).read_bytes()
    fast = specs.decode_run(data)
    assert fast == specs.from_model(RunMetadata.model_validate_json(data))
    assert fast.jobs  # the comparison covered jobs, executables and mappings


def test_hints_are_validated_and_shared(lab_dir: Path) -> None:
    lab = load_lab(lab_dir)
    with_hints = [job for job in lab.jobs.values() if job.spec.resource_hints is not None]
    assert with_hints
    assert all(type(job.spec.resource_hints).__name__ == "ResourceHints" for job in with_hints)
    meta = read_json(run_meta_path(lab_dir, "simulation"))
    job_id, spec = next(iter(meta["jobs"].items()))
    assert lab.jobs[job_id].resource_hints == {k: v for k, v in spec["resource_hints"].items() if v is not None}


def test_what_only_pydantic_accepts_loads_the_same(lab_dir: Path) -> None:
    """pydantic's JSON parser takes NaN (Python's json writes it for float("nan")); the strict
    decoder refuses it, so pydantic reads the file and its result is kept."""
    path = run_meta_path(lab_dir, "simulation")
    job_id = next(iter(read_json(path)["jobs"]))
    text = path.read_text().replace('"params": {', '"params": {"ratio": NaN, ', 1)
    path.write_text(text)
    rehash(lab_dir)
    with pytest.raises(specs.Refused):
        specs.decode_run(path.read_bytes())
    lab = load_lab(lab_dir)
    assert math.isnan(lab.jobs[job_id].params["ratio"])
    assert len(lab.jobs) == JOB_COUNT


def test_bad_hints_get_pydantic_message(lab_dir: Path) -> None:
    path = run_meta_path(lab_dir, "simulation")
    job_id = next(iter(read_json(path)["jobs"]))
    edit_json(path, lambda m: m["jobs"][job_id]["resource_hints"].update(gpus=-1))
    rehash(lab_dir)
    with pytest.raises(LabError) as info:
        load_lab(lab_dir)
    assert f"jobs.{job_id}.resource_hints.gpus" in str(info.value)
    assert "greater than or equal to 0" in str(info.value)


def test_specs_are_outside_the_cyclic_gc(lab_dir: Path) -> None:
    job = next(iter(load_lab(lab_dir).jobs.values()))
    assert not gc.is_tracked(job.spec)
    assert not any(gc.is_tracked(exe) for exe in job.executables.values())


# ---- the packed manifest ---------------------------------------------------------------------


def test_manifest_files_as_listed(lab_dir: Path) -> None:
    listed = read_json(lab_dir / MANIFEST)["files"]
    manifest = load_lab(lab_dir).manifest
    files = manifest.files
    assert len(files) == len(listed)
    assert [(f.path, f.sha256) for f in files] == [(e["path"], e["sha256"]) for e in listed]
    assert files[-1].path == listed[-1]["path"]
    assert [f.path for f in files[1:3]] == [e["path"] for e in listed[1:3]]
    assert list(manifest.paths()) == [e["path"] for e in listed]
    with pytest.raises(IndexError):
        files[len(listed)]


@pytest.mark.parametrize("order", ["as written", "reversed"])
def test_digest_of(lab_dir: Path, order: str) -> None:
    listed = read_json(lab_dir / MANIFEST)["files"]
    if order == "reversed":
        listed = listed[::-1]
        edit_json(lab_dir / MANIFEST, lambda m: m.update(files=listed))
    manifest = load_lab(lab_dir).manifest
    for entry in listed:
        assert manifest.digest_of(entry["path"]) == entry["sha256"]
    assert manifest.digest_of("not/listed") is None
    assert manifest.digest_of("") is None
    assert manifest.digest_of(listed[0]["path"] + "x") is None


def test_manifest_decodes_as_pydantic_does(lab_dir: Path) -> None:
    """Unknown keys in an entry are ignored by both, as upstream's loader does."""
    edit_json(lab_dir / MANIFEST, lambda m: m["files"][0].update(note="extra"))
    data = (lab_dir / MANIFEST).read_bytes()
    fast = specs.Manifest.decode(data)
    model = ManifestModel.model_validate_json(data)
    assert [(f.path, f.sha256) for f in fast.files] == [(f.path, f.sha256) for f in model.files]
    assert fast.labId == model.labId and fast.metadata == model.metadata


@pytest.mark.parametrize("digest", ["A" * 64, "a" * 63, "a" * 65, "a" * 62 + " a", "g" * 64, "\u00e9" * 64,
                                    "a" * 63 + "\n", " " + "a" * 63])
def test_a_malformed_digest_gets_pydantic_message(lab_dir: Path, digest: str) -> None:
    """The fast path checks all digests at once; whatever is not 64 lowercase hex digits is still
    refused with pydantic's message naming the entry."""
    edit_json(lab_dir / MANIFEST, lambda m: m["files"][2].update(sha256=digest))
    with pytest.raises(specs.Refused):
        specs.Manifest.decode((lab_dir / MANIFEST).read_bytes())
    with pytest.raises(LabError) as info:
        load_lab(lab_dir, verify=False)
    assert "files.2.sha256" in str(info.value) and "pattern" in str(info.value)


def test_repeated_values_are_shared(lab_dir: Path) -> None:
    """What a 100,000-job Lab repeats per job is held once: stage names, mapping names, the ids
    mappings refer to, identical outputs maps."""
    lab = load_lab(lab_dir)
    by_name: dict[str, list] = {}
    for job in lab.jobs.values():
        by_name.setdefault(job.spec.name, []).append(job)
    repeated = [jobs for jobs in by_name.values() if len(jobs) > 1]
    assert repeated
    for jobs in repeated:
        assert all(job.spec.name is jobs[0].spec.name for job in jobs)
        main = [job.executables["main"] for job in jobs if "main" in job.executables]
        assert all(exe.outputs is main[0].outputs for exe in main if exe.outputs == main[0].outputs)
    ids = {job_id: job_id for job_id in lab.jobs}
    mappings = [m for job in lab.jobs.values() for exe in job.executables.values() for m in exe.inputs
                if m.job_id in ids]
    assert mappings
    assert all(m.job_id is ids[m.job_id] for m in mappings)


def test_decoding_releases_what_it_has_read(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader maps a run's file and drops the pages behind the decoder; the jobs come out the same."""
    released: list[int] = []
    data = run_meta_path(lab_dir, "sweep").read_bytes()
    monkeypatch.setattr(specs, "RELEASE_EVERY", 1)
    assert specs.decode_run(data, released.append) == specs.decode_run(data)
    assert released == sorted(released) and 0 < released[-1] <= len(data)
    assert len(released) == len(specs.decode_run(data).jobs)
    everything = load_lab(lab_dir)  # through mmap and madvise, every job released as it goes
    assert len(everything.jobs) == JOB_COUNT
