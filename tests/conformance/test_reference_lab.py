"""Conformance: a Lab in the shape upstream's reference Lab has (see reference_lab.py) runs end to
end — as a directory, as a tar, as upstream's per-run Labs and through the daemon — and every
inspection path reads it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli import repxctl
from service import Daemon

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_lab  # noqa: E402

from repxd.lab.analysis import Experiment  # noqa: E402
from repxd.lab.loader import load_lab  # noqa: E402


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    return reference_lab.write(tmp_path_factory.mktemp("ref") / "lab")


def outputs(base: Path) -> Path:
    return base / "outputs"


def by_stage(lab, stage: str) -> list[str]:
    return sorted(j.id for j in lab.jobs.values() if j.name.startswith(stage))


def check_output_tree(lab_path: Path, base: Path) -> None:
    """What upstream's runner leaves, checked as a user of upstream's layout would."""
    lab = load_lab(lab_path, verify=False, unpack_dir=base / "unpacked") if lab_path.is_file() else load_lab(lab_path)
    out = outputs(base)
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {c["id"] for c in completions if c["s"] == "ok"} == set(lab.jobs)
    for job_id in lab.jobs:
        repx = out / job_id / "repx"
        assert (repx / "SUCCESS").exists() and not (repx / "FAIL").exists(), job_id
        assert json.loads((repx / "parameters.json").read_text()) == lab.jobs[job_id].spec.params

    # E's totals and G's results, as the scripts compute them from the baked-in parameters.
    totals = {}
    for job_id in by_stage(lab, "stage-E-total-sum"):
        inputs = json.loads((out / job_id / "repx" / "inputs.json").read_text())
        (dep,) = lab.jobs[job_id].deps
        assert inputs == {"data__partial_sums": str(out / dep / "out" / "partial_sums.txt")}
        totals[job_id] = int((out / job_id / "out" / "total_sum.txt").read_text())
    offsets = reference_lab.OFFSETS
    assert sorted(set(totals.values())) == sorted(reference_lab.expected_total(o) for o in offsets)
    results = set()
    for job_id in by_stage(lab, "stage-G-multiarg"):
        results.add(int((out / job_id / "out" / "multiarg_result.txt").read_text()))
    assert results == {reference_lab.expected_multiarg(o, c["multiplier"]) for o in offsets for c in reference_lab.CONFIGS}

    # Scatter-gather: one branch per line of C's list, work items as the scatter wrote them, the
    # scatter's object-valued `worker__arg` left in the metadata and out of every inputs.json.
    for job_id in by_stage(lab, "stage-D-partial-sums"):
        root = out / job_id
        items = json.loads((root / "scatter" / "out" / "work_items.json").read_text())
        assert items == [{"startIndex": i} for i in range(10)]
        for i in range(10):
            assert json.loads((root / f"branch-{i}" / "repx" / "work_item.json").read_text()) == {"startIndex": i}
            extract_inputs = json.loads((root / f"branch-{i}" / "step-extract" / "repx" / "inputs.json").read_text())
            assert extract_inputs["worker__item"] == str(root / f"branch-{i}" / "repx" / "work_item.json")
        manifest = json.loads((root / "repx" / "worker_outs_manifest.json").read_text())
        assert manifest == [{"partial_sum": str(root / f"branch-{i}" / "step-combine" / "out" / "worker-result.txt")}
                            for i in range(10)]
        assert "worker__arg" not in (root / "repx" / "inputs.json").read_text()
        assert lab.jobs[job_id].executables["scatter"].outputs["worker__arg"] == {"startIndex": 0}

    # The analysis run reads the simulation run's metadata through `metadata__simulation-run`.
    (analysis,) = by_stage(lab, "stage-analysis")
    inputs = json.loads((out / analysis / "repx" / "inputs.json").read_text())
    assert inputs["metadata__simulation-run"] == str(base / "artifacts" / "revision" / "metadata-simulation-run.json")
    assert inputs["store__base"] == str(base)
    plot = (out / analysis / "out" / "plot.png").read_text().split()
    assert sorted(map(int, plot)) == sorted(totals.values())


def test_directory_lab_runs_end_to_end(lab_dir, tmp_path):
    base = tmp_path / "base"
    result = repxctl("run", "@all", "--lab", lab_dir, "--base-path", base, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["failed"] == {}
    check_output_tree(lab_dir, base)
    again = repxctl("run", "@all", "--lab", lab_dir, "--base-path", base)
    assert again.code == 0 and "Nothing to do" in again.stderr + again.stdout


def test_tar_lab_runs_end_to_end(tmp_path):
    tar = reference_lab.build().write_tar(tmp_path / "lab.tar")
    base = tmp_path / "base"
    result = repxctl("run", "@all", "--lab", tar, "--base-path", base)
    assert result.code == 0, result.stderr
    check_output_tree(tar, base)


@pytest.mark.parametrize("mode", ["unified", "none"])
def test_container_modes_load(tmp_path, mode):
    """Upstream's containerMode changes where images live; without images every run is native."""
    lab = load_lab(reference_lab.write(tmp_path / "lab", container_mode=mode))
    assert {r.image for r in lab.runs.values()} == {None}


def test_per_run_lab_runs_without_the_other_run(tmp_path):
    """Upstream's `runs.analysis-run` Lab holds one run; the simulation run's metadata input is left
    out with a warning (upstream's inputs.rs does the same), and the job runs."""
    per_run = reference_lab.write(tmp_path / "analysis-lab", only_run="analysis-run")
    base = tmp_path / "base"
    result = repxctl("run", "analysis-run", "--lab", per_run, "--base-path", base)
    assert result.code == 0, result.stderr
    assert "warning:" in result.stderr and "'simulation-run'" in result.stderr
    (job_dir,) = [p for p in outputs(base).iterdir() if p.is_dir()]
    inputs = json.loads((job_dir / "repx" / "inputs.json").read_text())
    assert inputs == {"store__base": str(base)}
    assert (job_dir / "out" / "plot.png").read_text() == "no simulation metadata\n"

    sim = reference_lab.write(tmp_path / "sim-lab", only_run="simulation-run")
    assert set(load_lab(sim).runs) == {"simulation-run"}
    assert repxctl("run", "simulation-run", "--lab", sim, "--base-path", tmp_path / "b2").code == 0


def test_inspection_commands_read_it(lab_dir, tmp_path):
    base = tmp_path / "base"
    assert repxctl("run", "@compute", "--lab", lab_dir, "--base-path", base).code == 0
    verify = subprocess.run([shutil.which("repxd"), "verify-lab", str(lab_dir), "--json"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["jobs"] == len(load_lab(lab_dir).jobs)

    listed = repxctl("list", "jobs", "--lab", lab_dir, "--base-path", base, "--json")
    assert listed.code == 0, listed.stderr
    status = {j["id"]: j["status"] for j in listed.json()}
    lab = load_lab(lab_dir)
    assert {status[j] for j in lab.runs["simulation-run"].job_ids} == {"Succeeded"}
    (scatter_job,) = by_stage(lab, "stage-D-partial-sums")[:1]
    shown = repxctl("show", "job", scatter_job, "--lab", lab_dir, "--base-path", base, "--json")
    assert shown.code == 0, shown.stderr
    assert shown.json()["outputs"] == {"data__partial_sums": str(outputs(base) / scatter_job / "out" / "partial_sums.txt")}

    # The analysis API, as a notebook uses it: jobs by stage, their status and output files.
    exp = Experiment(lab_dir, store_base=base)
    totals = exp.jobs().filter(lambda j: j.name.startswith("stage-E-total-sum"))
    assert sorted(j.id for j in totals) == by_stage(lab, "stage-E-total-sum")
    assert {int(j.get_output_path("data.total_sum").read_text()) for j in totals} == {
        reference_lab.expected_total(o) for o in reference_lab.OFFSETS}
    (sg,) = [j for j in exp.jobs() if j.id == scatter_job]
    assert sg.stage_type == "scatter-gather" and sg.outputs == {"data__partial_sums": "$out/partial_sums.txt"}


def test_through_the_daemon(lab_dir, tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        result = repxctl("run", "@all", "--lab", lab_dir, "--json", env=env)
        assert result.code == 0, result.stderr + daemon.logs()
        assert result.json()["state"] == "succeeded"
        check_output_tree(lab_dir, daemon.base)
    finally:
        daemon.stop()


def test_tar_lab_loads_on_debians_python(tmp_path):
    """The system tier and NixOS run the system Python (Debian 12: 3.11.2, no extraction filters)."""
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        pytest.skip("no /usr/bin/python3")
    tar = reference_lab.build().write_tar(tmp_path / "lab.tar")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), *site]))
    code = ("import sys; from pathlib import Path; from repxd.lab.loader import load_lab; "
            f"lab = load_lab(Path({str(tar)!r}), unpack_dir=Path({str(tmp_path / 'u')!r})); print(len(lab.jobs), sys.version)")
    proc = subprocess.run([str(system_python), "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(len(load_lab(reference_lab.write(tmp_path / "d")).jobs))
