"""Upstream's `repx tui`, `repx debug-run` and global `--resources` under repxctl: `tui` is our
`top`; `debug-run JOB` runs the job here in the foreground after what it needs, outputs in
./.repx-cache; `--resources FILE` before the command reaches the commands that use resources."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cli import repxctl
from service import Daemon

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
import reference_lab  # noqa: E402

from repxd.lab.writer import LabWriter  # noqa: E402


def test_debug_run_runs_the_job_after_what_it_needs(tmp_path: Path) -> None:
    lab = reference_lab.write(tmp_path / "lab")
    meta = json.loads((lab / "revision" / "metadata-simulation-run.json").read_text())["jobs"]
    total = next(j for j, job in meta.items() if job["name"] == "stage-E-total-sum-1.0")
    work = tmp_path / "work"
    work.mkdir()
    result = repxctl("debug-run", total[:12], "--lab", lab, cwd=work)
    assert result.code == 0, result.stderr
    out = work / ".repx-cache" / "outputs" / total / "out"
    assert f"Outputs of {total}: {out}" in result.stdout
    assert int((out / "total_sum.txt").read_text()) in {reference_lab.expected_total(o) for o in reference_lab.OFFSETS}
    # Only what the job reads ran: A, B, C, the scatter-gather D and E itself; nothing after E.
    ran = {p.name.split("-", 1)[1] for p in (work / ".repx-cache" / "outputs").iterdir() if p.is_dir()}
    assert ran == {"stage-A-producer-1.0", "stage-B-producer-1.0", "stage-C-consumer-1.0",
                   "stage-D-partial-sums-1.0", "stage-E-total-sum-1.0"}
    again = repxctl("debug-run", total, "--lab", lab, cwd=work)
    assert again.code == 0 and "already" in again.stderr


def test_debug_run_shows_a_failing_jobs_logs_and_exits_1(tmp_path: Path) -> None:
    writer = LabWriter()
    writer.run("r").job("broken", "#!/bin/sh\necho computing\necho 'no such input: data.csv' >&2\nexit 3\n")
    lab = writer.write(tmp_path / "lab")
    (job_id,) = [p.name for p in (lab / "jobs").iterdir()]
    result = repxctl("debug-run", job_id, "--lab", lab, "--base-path", tmp_path / "cache", cwd=tmp_path)
    assert result.code == 1
    assert "computing" in result.stdout and "no such input: data.csv" in result.stderr
    assert f"job {job_id} did not succeed" in result.stderr
    assert not (tmp_path / ".repx-cache").exists()  # --base-path replaces the default cache


def test_debug_run_of_an_unknown_job_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = repxctl("debug-run", "zzzz", "--lab", reference_lab.write(tmp_path / "lab"), cwd=tmp_path)
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0 and "no job id starts with 'zzzz'" in result.stderr


def test_tui_is_top(tmp_path: Path) -> None:
    tui, top = repxctl("tui", "--help"), repxctl("top", "--help")
    assert tui.code == top.code == 0
    assert tui.stdout.replace("repxctl tui", "repxctl top") == top.stdout
    nowhere = str(tmp_path / "no.sock")
    tui, top = repxctl("tui", "--api", nowhere), repxctl("top", "--api", nowhere)
    assert tui.code == top.code == 2
    assert tui.stderr.replace("repxctl tui", "repxctl top") == top.stderr and "no repx daemon answers" in tui.stderr


def test_global_resources_reach_show_job_and_run(tmp_path: Path) -> None:
    lab = reference_lab.write(tmp_path / "lab")
    meta = json.loads((lab / "revision" / "metadata-simulation-run.json").read_text())["jobs"]
    total = next(j for j, job in meta.items() if job["name"] == "stage-E-total-sum-1.0")
    resources = tmp_path / "cluster-resources.toml"
    resources.write_text('[defaults]\nmem = "3G"\n')
    shown = repxctl("--resources", resources, "show", "job", total, "--lab", lab, "--resources", "--json", cwd=tmp_path)
    assert shown.code == 0, shown.stderr
    assert shown.json()["resources"]["mem"] == {"value": "3G", "source": f"default ({resources})"}
    # A command's own option wins over the global one, as upstream's clap globals do.
    own = tmp_path / "own.toml"
    own.write_text('[defaults]\nmem = "5G"\n')
    shown = repxctl("--resources", resources, "show", "job", total, "--lab", lab, "--resources", "--resources-file", own,
                    "--json", cwd=tmp_path)
    assert shown.json()["resources"]["mem"] == {"value": "5G", "source": f"default ({own})"}
    # run takes it like its own --resources: a daemon run refuses it (the daemon's config decides).
    daemon = Daemon.create()
    try:
        daemon.start("all")
        refused = repxctl("--resources", resources, "run", "@all", "--lab", lab, env=dict(daemon.env, REPX_API=str(daemon.socket)))
        assert refused.code == 2 and "--resources" in refused.stderr and "--embedded" in refused.stderr
    finally:
        daemon.stop()
    missing = repxctl("--resources", tmp_path / "nope.toml", "list", "runs", "--lab", lab)
    assert missing.code == 2 and "nope.toml" in missing.stderr
