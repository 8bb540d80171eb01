"""The example Labs end to end on native, bwrap and podman: outputs, layout, incrementality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import repxctl
from conftest import require_program
from definitions import build

from repxd.lab.loader import load_lab
from repxd.lab.writer import ImageSpec

SELECTION = {"simple": "@all", "sweep-scatter": "sweep"}


def expected_tree(lab_dir: Path) -> set[str]:
    """The files lab-format §6–7 promises under outputs/, derived from the Lab's metadata."""
    lab = load_lab(lab_dir, verify=False)
    files = {"completions.jsonl"}
    logs = ("stdout.log", "stderr.log")
    for job_id, job in lab.jobs.items():
        repx = f"{job_id}/repx"
        if job.stage_type == "simple":
            files |= {f"{repx}/{name}" for name in ("inputs.json", "parameters.json", "SUCCESS", *logs)}
            files |= {f"{job_id}/out/{t.removeprefix('$out/')}" for t in job.executables["main"].outputs.values()}
            continue
        files |= {f"{repx}/{name}" for name in ("inputs.json", "parameters.json", "gather_inputs.json",
                                                "worker_outs_manifest.json", "SUCCESS", *logs)}
        files |= {f"{job_id}/out/{t.removeprefix('$out/')}" for t in job.executables["gather"].outputs.values()}
        files |= {f"{job_id}/scatter/out/work_items.json", f"{job_id}/scatter/repx/SUCCESS"}
        files |= {f"{job_id}/scatter/repx/{name}" for name in logs}
        items = json.loads((lab_dir.parent / "base" / "outputs" / job_id / "scatter/out/work_items.json").read_text())
        steps = [n.removeprefix("step-") for n in job.executables if n.startswith("step-")]
        for i in range(len(items)):
            files.add(f"{job_id}/branch-{i}/repx/work_item.json")
            for step in steps:
                step_dir = f"{job_id}/branch-{i}/step-{step}"
                files |= {f"{step_dir}/repx/{name}" for name in ("inputs.json", "SUCCESS", *logs)}
                files |= {f"{step_dir}/out/{t.removeprefix('$out/')}" for t in job.executables[f"step-{step}"].outputs.values()}
    return files


def actual_tree(outputs: Path) -> set[str]:
    return {p.relative_to(outputs).as_posix() for p in outputs.rglob("*") if p.is_file()}


def check_results(name: str, outputs: Path) -> None:
    if name == "simple":
        (total,) = outputs.glob("*-total-1.0/out/total.txt")
        assert total.read_text().strip() == "90"  # squares of 2..6
        (report,) = outputs.glob("*-report-1.0/out/report.txt")
        assert report.read_text().splitlines() == ["simulation jobs: 3", "90"]
    else:
        (summary,) = outputs.glob("*-collect-1.0/out/summary.txt")
        lines = summary.read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["sum_1", "sum_2", "sum_3"]
        for seed, line in enumerate(lines, start=1):
            values = [(seed * 7919 + i * 104729) % 1000 for i in range(1, 5)]
            assert int(line.split()[1]) == sum(v * v + 10 for v in values)


@pytest.fixture
def runtime_env(request, podman_env):
    return podman_env if request.param == "podman" else None


def _lab(tmp_path: Path, name: str, runtime: str, rootfs: Path | None) -> Path:
    image = ImageSpec(rootfs, "localhost/repx-busybox:test") if runtime != "native" else None
    return build(name, tmp_path / "lab", image)


@pytest.mark.parametrize("name", ["simple", "sweep-scatter"])
@pytest.mark.parametrize("runtime", ["native", "bwrap", "podman"])
def test_example_runs_end_to_end(tmp_path, name, runtime, request):
    rootfs = None
    env = None
    if runtime != "native":
        require_program("bwrap" if runtime == "bwrap" else "podman")
        rootfs = request.getfixturevalue("busybox_rootfs")
        if runtime == "podman":
            env = request.getfixturevalue("podman_env")
    lab = _lab(tmp_path, name, runtime, rootfs)
    base = tmp_path / "base"
    result = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", base, "--runtime", runtime, "--json", env=env)
    assert result.code == 0, result.stderr + result.stdout
    summary = result.json()
    assert summary["ok"] and summary["failed"] == {} and summary["executed"] == summary["selected"]

    outputs = base / "outputs"
    check_results(name, outputs)
    assert actual_tree(outputs) == expected_tree(lab)
    records = [json.loads(line) for line in (outputs / "completions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(load_lab(lab, verify=False).jobs)
    assert {r["s"] for r in records} == {"ok"}

    again = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", base, "--runtime", runtime, "--json", env=env)
    assert again.code == 0 and again.json()["executed"] == 0
    plain = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", base, env=env)
    assert "Nothing to do" in plain.stdout
    listed = repxctl("list", "jobs", "--lab", lab, "--base-path", base, "--json").json()
    assert {row["status"] for row in listed} == {"Succeeded"}


SANDBOX_PROBE = """#!/bin/sh
set -u
out="$1"
{
  [ -e /etc/repx-test-image ] && echo "image-root" || echo "host-root"
  [ -e /proc/self ] && echo "proc"
  touch "$out/../../outside-out" 2>/dev/null && echo "base-writable" || echo "base-readonly"
  echo "path=$PATH"
} > "$out/probe.txt"
"""


def test_bwrap_confines_the_job(tmp_path, busybox_rootfs):
    require_program("bwrap")
    from repxd.lab.writer import LabWriter

    writer = LabWriter()
    writer.run("probe", image=ImageSpec(busybox_rootfs, "localhost/repx-busybox:test")).job(
        "probe", SANDBOX_PROBE, outputs={"probe": "$out/probe.txt"})
    lab = writer.write(tmp_path / "lab")
    base = tmp_path / "base"
    result = repxctl("run", "probe", "--lab", lab, "--base-path", base, "--runtime", "bwrap")
    assert result.code == 0, result.stderr
    (probe,) = (base / "outputs").glob("*/out/probe.txt")
    lines = probe.read_text().splitlines()
    assert lines[:3] == ["image-root", "proc", "base-readonly"]
    assert not any((base / "outputs").glob("outside-out"))


def test_tar_lab_runs_like_a_directory(tmp_path):
    from definitions import simple

    tar = simple().write_tar(tmp_path / "lab.tar")
    base = tmp_path / "base"
    result = repxctl("run", "simulation", "--lab", tar, "--base-path", base, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["executed"] == 3
    (total,) = (base / "outputs").glob("*-total-1.0/out/total.txt")
    assert total.read_text().strip() == "90"
