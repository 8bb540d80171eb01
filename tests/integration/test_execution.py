"""Execution semantics a user relies on: failures, re-runs, concurrency, admission, cancel."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import repxctl

from repxd.lab.writer import LabWriter

OK = "#!/bin/sh\necho ran >> \"$1/../../../ran.log\"\necho done > \"$1/result.txt\"\n"
FAIL = "#!/bin/sh\necho 'boom: cannot continue' >&2\nexit 3\n"


def outputs_of(base: Path) -> Path:
    return base / "outputs"


def ran(base: Path) -> int:
    log = base / "ran.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def chain_lab(tmp_path: Path, middle: str = OK) -> tuple[Path, dict[str, str]]:
    """a -> b -> c, plus an independent d."""
    lab = LabWriter()
    run = lab.run("chain")
    a = run.job("a", OK, outputs={"r": "$out/result.txt"})
    b = run.job("b", middle, inputs={"x": a.output("r")}, outputs={"r": "$out/result.txt"})
    c = run.job("c", OK, inputs={"x": b.output("r")}, outputs={"r": "$out/result.txt"})
    d = run.job("d", OK, params={"independent": True}, outputs={"r": "$out/result.txt"})
    return lab.write(tmp_path / "lab"), {"a": a.id, "b": b.id, "c": c.id, "d": d.id}


def test_failure_stops_new_launches_and_reports(tmp_path):
    lab, ids = chain_lab(tmp_path, middle=FAIL)
    base = tmp_path / "base"
    result = repxctl("run", "chain", "--lab", lab, "--base-path", base, "-j", "1", "--json")
    assert result.code == 1
    summary = result.json()
    assert list(summary["failed"]) == [ids["b"]]
    assert "exited with status 3" in summary["failed"][ids["b"]]
    assert ids["c"] in summary["blocked"]
    assert (outputs_of(base) / ids["b"] / "repx" / "FAIL").exists()
    assert "boom: cannot continue" in (outputs_of(base) / ids["b"] / "repx" / "stderr.log").read_text()
    assert not (outputs_of(base) / ids["c"]).exists()
    # plain output names the failed job and where its log is
    again = repxctl("run", "chain", "--lab", lab, "--base-path", base, "-j", "1")
    assert again.code == 1 and f"FAIL  {ids['b']}" in again.stdout and "stderr.log" in again.stdout


def test_continue_on_failure_runs_independent_jobs(tmp_path):
    lab, ids = chain_lab(tmp_path, middle=FAIL)
    base = tmp_path / "base"
    result = repxctl("run", "chain", "--lab", lab, "--base-path", base, "-j", "1", "--continue-on-failure", "--json")
    assert result.code == 1
    summary = result.json()
    assert set(summary["succeeded"]) == {ids["a"], ids["d"]}
    assert summary["blocked"] == [ids["c"]] and summary["not_started"] == []


def test_rerun_executes_nothing_then_only_what_changed(tmp_path):
    lab, ids = chain_lab(tmp_path)
    base = tmp_path / "base"
    assert repxctl("run", "chain", "--lab", lab, "--base-path", base).code == 0
    assert ran(base) == 4
    second = repxctl("run", "chain", "--lab", lab, "--base-path", base, "--json").json()
    assert second["executed"] == 0 and ran(base) == 4
    # Deleting a job's output directory re-runs that job only: its dependents' ids (and so their
    # inputs' identity) are unchanged, so they stay done.
    import shutil

    shutil.rmtree(outputs_of(base) / ids["b"])
    third = repxctl("run", "chain", "--lab", lab, "--base-path", base, "--json").json()
    assert third["succeeded"] == [ids["b"]] and ran(base) == 5


def test_failed_job_reruns_and_succeeds_after_fix(tmp_path):
    flag = tmp_path / "allow"
    flaky = f"#!/bin/sh\n[ -e {flag} ] || exit 1\necho ok > \"$1/result.txt\"\n"
    lab, ids = chain_lab(tmp_path, middle=flaky)
    base = tmp_path / "base"
    assert repxctl("run", "chain", "--lab", lab, "--base-path", base).code == 1
    flag.touch()
    result = repxctl("run", "chain", "--lab", lab, "--base-path", base, "--json")
    assert result.code == 0
    assert set(result.json()["succeeded"]) == {ids["b"], ids["c"]}
    assert not (outputs_of(base) / ids["b"] / "repx" / "FAIL").exists()
    lines = (outputs_of(base) / "completions.jsonl").read_text().splitlines()
    assert sum(ids["b"] in line for line in lines) == 2  # fail, then ok: the last line wins


def interval_lab(tmp_path: Path, count: int, resources: dict | None = None) -> Path:
    script = "#!/bin/sh\necho \"start $(date +%s%N)\" > \"$1/t\"\nsleep 0.3\necho \"end $(date +%s%N)\" >> \"$1/t\"\n"
    lab = LabWriter()
    run = lab.run("par")
    for i in range(count):
        run.job("sleepy", script, params={"i": i}, outputs={"t": "$out/t"}, resources=resources)
    return lab.write(tmp_path / "lab")


def max_overlap(base: Path) -> int:
    events = []
    for f in outputs_of(base).glob("*/out/t"):
        start, end = (int(line.split()[1]) for line in f.read_text().splitlines())
        events += [(start, 1), (end, -1)]
    current = peak = 0
    for _t, delta in sorted(events):
        current += delta
        peak = max(peak, current)
    return peak


def test_concurrency_limit(tmp_path):
    lab = interval_lab(tmp_path, 4)
    base = tmp_path / "base"
    assert repxctl("run", "par", "--lab", lab, "--base-path", base, "-j", "1").code == 0
    assert max_overlap(base) == 1
    base2 = tmp_path / "base2"
    assert repxctl("run", "par", "--lab", lab, "--base-path", base2, "-j", "4").code == 0
    assert max_overlap(base2) > 1


def test_memory_admission(tmp_path):
    lab = interval_lab(tmp_path, 3, resources={"mem": "600M"})
    base = tmp_path / "base"
    assert repxctl("run", "par", "--lab", lab, "--base-path", base, "-j", "3", "--mem", "1G").code == 0
    assert max_overlap(base) == 1  # two 600M jobs do not fit into 1G
    base2 = tmp_path / "base2"
    assert repxctl("run", "par", "--lab", lab, "--base-path", base2, "-j", "3", "--mem", "2G").code == 0
    assert max_overlap(base2) >= 2


def test_job_larger_than_the_machine_runs_alone(tmp_path):
    lab = interval_lab(tmp_path, 2, resources={"mem": "64G", "cpus": 512})
    base = tmp_path / "base"
    result = repxctl("run", "par", "--lab", lab, "--base-path", base, "-j", "2", "--mem", "1G")
    assert result.code == 0, result.stderr
    assert max_overlap(base) == 1


def process_alive(pid: int, wait: float = 5.0) -> bool:
    """Running (a zombie whose parent is gone counts as dead: only reaping is left)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_children_and_leaves_no_marker(tmp_path, sig):
    pidfile = tmp_path / "child.pid"
    script = f"#!/bin/sh\necho $$ > {pidfile}\nsleep 60\necho late > \"$1/x\"\n"
    lab = LabWriter()
    job = lab.run("slow").job("slow", script, outputs={"x": "$out/x"})
    lab_dir = lab.write(tmp_path / "lab")
    base = tmp_path / "base"
    proc = subprocess.Popen(["repxctl", "run", "slow", "--lab", str(lab_dir), "--base-path", str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert "Cancelled" in err and "Traceback" not in err
    repx = outputs_of(base) / job.id / "repx"
    assert not (repx / "SUCCESS").exists() and not (repx / "FAIL").exists()
    assert not list(repx.glob(".*.tmp"))
    assert not process_alive(child)
    assert not (outputs_of(base) / "completions.jsonl").exists()


def test_killed_launcher_job_is_adopted_not_rerun(tmp_path):
    """kill -9 of repxctl leaves its job running; the next run waits for it and records its
    result instead of starting it a second time."""
    started = tmp_path / "started"
    script = f"#!/bin/sh\necho x >> {tmp_path}/executions\ntouch {started}\nsleep 1.5\necho done > \"$1/r\"\n"
    lab = LabWriter()
    job = lab.run("one").job("one", script, outputs={"r": "$out/r"})
    lab_dir = lab.write(tmp_path / "lab")
    base = tmp_path / "base"
    first = subprocess.Popen(["repxctl", "run", "one", "--lab", str(lab_dir), "--base-path", str(base)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    first.wait()
    second = repxctl("run", "one", "--lab", lab_dir, "--base-path", base, "--json")
    assert second.code == 0, second.stderr
    assert second.json()["succeeded"] == [job.id]
    assert (tmp_path / "executions").read_text().splitlines() == ["x"]
    assert (outputs_of(base) / job.id / "out" / "r").read_text() == "done\n"


def test_concurrent_runs_share_a_job(tmp_path):
    script = f"#!/bin/sh\necho x >> {tmp_path}/executions\nsleep 1\necho done > \"$1/r\"\n"
    lab = LabWriter()
    lab.run("one").job("one", script, outputs={"r": "$out/r"})
    lab_dir = lab.write(tmp_path / "lab")
    base = str(tmp_path / "base")
    runs = [subprocess.Popen(["repxctl", "run", "one", "--lab", str(lab_dir), "--base-path", base],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in runs:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert (tmp_path / "executions").read_text().splitlines() == ["x"]
