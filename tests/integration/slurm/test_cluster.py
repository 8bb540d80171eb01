"""The test SLURM cluster itself works: what the SLURM target's tests rely on, checked against
the real daemons (the states match tests/fixtures/slurm/, recorded from this cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import missing, require_program
from slurm_cluster import SlurmCluster, start_cluster

pytestmark = pytest.mark.integration

SACCT = ["sacct", "--parsable2", "--noheader", "--format=JobIDRaw,JobID,JobName,State,ExitCode,NodeList"]


def submit(cluster: SlurmCluster, workdir: Path, *options: str) -> str:
    return cluster.run("sbatch", "--parsable", f"--chdir={workdir}", *options).stdout.strip()


def allocations(cluster: SlurmCluster, job_id: str, timeout: float = 15) -> list[list[str]]:
    """sacct's rows for the job's allocations once slurmdbd has their start records: for a few
    seconds after a short job ends, its row can still show JobName "allocation" (recorded in
    tests/fixtures/slurm/oom.sacct-first-look.txt)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [line.split("|") for line in cluster.run(*SACCT, "-X", "-j", job_id).stdout.splitlines()]
        if (rows and all(row[2] != "allocation" for row in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


@pytest.fixture(scope="module")
def timeout_job(slurm_cluster, tmp_path_factory) -> str:
    """Submitted first: the shortest time limit is one minute, so this job runs while the
    module's other tests do, and the TIMEOUT test at the end waits for what is left."""
    return submit(slurm_cluster, tmp_path_factory.mktemp("timeout"), "--job-name=limit", "--time=0:02",
                  "--wrap=sleep 300")


def test_nodes_idle_and_accounting_knows_the_cluster(slurm_cluster, timeout_job):
    assert len(slurm_cluster.nodes) == 2
    states = slurm_cluster.node_states()
    assert set(states) == set(slurm_cluster.nodes)
    # The module's TIMEOUT job may already run on one of them.
    assert set(states.values()) <= {"idle", "mixed"}
    config = slurm_cluster.run("scontrol", "show", "config").stdout
    assert "MaxArraySize            = 1001" in config
    assert "MinJobAge               = 2 sec" in config
    associations = slurm_cluster.run("sacctmgr", "--noheader", "--parsable2", "show", "association",
                                     "format=Cluster,Account,User").stdout.splitlines()
    assert f"repxtest|{slurm_cluster.account}|root" in associations


def test_sbatch_then_sacct_reports_name_state_and_exit_code(slurm_cluster, tmp_path):
    ok = submit(slurm_cluster, tmp_path, "--job-name=repx-ok", "--output=ok.out", "--wrap=echo hello from $SLURM_JOB_ID")
    failing = submit(slurm_cluster, tmp_path, "--job-name=repx-fails", "--wrap=exit 3")
    assert ok.isdigit() and failing.isdigit()
    assert slurm_cluster.wait_state(ok, {"COMPLETED", "FAILED"}) == "COMPLETED"
    assert slurm_cluster.wait_state(failing, {"COMPLETED", "FAILED"}) == "FAILED"
    assert (tmp_path / "ok.out").read_text() == f"hello from {ok}\n"
    [[raw, job_id, name, state, exit_code, node]] = allocations(slurm_cluster, ok)
    assert (raw, job_id, name, state, exit_code) == (ok, ok, "repx-ok", "COMPLETED", "0:0")
    assert node in slurm_cluster.nodes
    assert allocations(slurm_cluster, failing)[0][3:5] == ["FAILED", "3:0"]


def test_other_user_submits_once_added(slurm_cluster):
    require_program("useradd")
    require_program("runuser")
    name = "repx-slurm-user"
    subprocess.run(["userdel", name], capture_output=True)
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                           name], capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"useradd {name} failed: {made.stderr.strip()}")
    # The user's job directory must be reachable by the user: not under pytest's 0700 tmp.
    jobdir = Path(tempfile.mkdtemp(prefix="repx-slurm-user-"))
    try:
        shutil.chown(jobdir, name)
        as_user = ["runuser", "-u", name, "--", "sbatch", "--parsable", f"--chdir={jobdir}", "--output=who.out",
                   "--wrap=id -un"]
        refused = slurm_cluster.run(*as_user, check=False)
        assert refused.returncode == 1
        assert "Invalid account" in refused.stderr
        slurm_cluster.add_user(name)
        job = slurm_cluster.run(*as_user).stdout.strip()
        assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED"}) == "COMPLETED"
        assert (jobdir / "who.out").read_text() == f"{name}\n"
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)


def test_array_tasks_are_listed_as_id_underscore_index(slurm_cluster, tmp_path):
    array = submit(slurm_cluster, tmp_path, "--job-name=repx-array", "--array=0-3%2", "--output=task-%a.out",
                   "--wrap=sleep 2; echo $SLURM_ARRAY_TASK_ID")
    throttled = f"{array}_[2-3%2]|PENDING|JobArrayTaskLimit"
    deadline = time.monotonic() + 15
    queue: list[str] = []
    while throttled not in queue and time.monotonic() < deadline:
        time.sleep(0.2)
        queue = slurm_cluster.run("squeue", "--noheader", "--format=%i|%T|%r", "-j", array).stdout.splitlines()
    assert sorted(queue) == [f"{array}_0|RUNNING|None", f"{array}_1|RUNNING|None", throttled]
    for index in range(4):
        slurm_cluster.wait_state(f"{array}_{index}", {"COMPLETED"})
    rows = allocations(slurm_cluster, array)
    assert sorted(row[1] for row in rows) == [f"{array}_{index}" for index in range(4)]
    assert {row[3] for row in rows} == {"COMPLETED"}
    assert [(tmp_path / f"task-{index}.out").read_text() for index in range(4)] == ["0\n", "1\n", "2\n", "3\n"]


def test_job_over_its_memory_is_killed(slurm_cluster, tmp_path):
    job = submit(slurm_cluster, tmp_path, "--job-name=repx-oom", "--mem=50M", "--output=oom.out",
                 "--wrap=python3 -c \"import time; b = b'x' * (300 << 20); time.sleep(30)\"")
    # Without cgroups (this machine) SLURM kills by sampled RSS: FAILED 0:9, not OUT_OF_MEMORY.
    assert slurm_cluster.wait_state(job, {"FAILED", "OUT_OF_MEMORY", "COMPLETED"}, timeout=20) == "FAILED"
    assert allocations(slurm_cluster, job)[0][4] == "0:9"
    assert "exceeded memory limit" in (tmp_path / "oom.out").read_text()


def test_dependent_of_failed_job_is_cancelled(slurm_cluster, tmp_path):
    failing = submit(slurm_cluster, tmp_path, "--wrap=sleep 1; exit 1")
    dependent = submit(slurm_cluster, tmp_path, f"--dependency=afterok:{failing}", "--kill-on-invalid-dep=yes",
                       "--output=dependent.out", "--wrap=echo ran")
    assert slurm_cluster.wait_state(dependent, {"CANCELLED", "COMPLETED"}) == "CANCELLED"
    assert not (tmp_path / "dependent.out").exists()


def test_job_survives_controller_restart(slurm_cluster, tmp_path):
    job = submit(slurm_cluster, tmp_path, "--output=job.out", "--wrap=sleep 5; echo done")
    slurm_cluster.wait_state(job, {"RUNNING"})
    slurm_cluster.restart_controller()
    assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED", "NODE_FAIL"}, timeout=30) == "COMPLETED"
    assert (tmp_path / "job.out").read_text() == "done\n"


def test_node_down_fails_its_job_and_resume_returns_it(slurm_cluster, tmp_path):
    job = submit(slurm_cluster, tmp_path, "--no-requeue", "--nodelist=n2", "--wrap=sleep 300")
    slurm_cluster.wait_state(job, {"RUNNING"})
    slurm_cluster.set_node_state("n2", "DOWN")
    try:
        assert slurm_cluster.wait_state(job, {"NODE_FAIL", "CANCELLED"}) == "NODE_FAIL"
        assert slurm_cluster.node_states()["n2"] == "down"
    finally:
        slurm_cluster.set_node_state("n2", "RESUME")
    slurm_cluster.wait_nodes_idle()


def test_without_accounting_sacct_refuses_and_squeue_answers(slurm_programs, tmp_path):
    cluster = start_cluster(tmp_path / "cluster", nodes=1, accounting=False)
    try:
        job = submit(cluster, tmp_path, "--job-name=repx-no-acct", "--wrap=sleep 30")
        refused = cluster.run("sacct", "-j", job, check=False)
        assert refused.returncode != 0
        assert "accounting storage is disabled" in refused.stderr
        queue = _wait_squeue(cluster, job, "RUNNING")
        assert queue == f"{job}|repx-no-acct|RUNNING|n1"
    finally:
        cluster.stop()


def test_stop_leaves_no_process(slurm_programs, tmp_path):
    cluster = start_cluster(tmp_path / "cluster", nodes=1, accounting=False)
    try:
        job = submit(cluster, tmp_path, "--wrap=sleep 7654321")
        _wait_squeue(cluster, job, "RUNNING")
        deadline = time.monotonic() + 20  # RUNNING comes before slurmstepd has started the script
        while not _processes_mentioning("7654321") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_mentioning("7654321"), "the job's sleep should be visible before stop"
    finally:
        cluster.stop()
    assert _processes_mentioning("7654321") == []
    assert _processes_mentioning(str(tmp_path)) == []


def _wait_squeue(cluster: SlurmCluster, job: str, state: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = cluster.run("squeue", "--noheader", "--format=%i|%j|%T|%N", "-j", job).stdout.strip()
        if f"|{state}|" in line:
            return line
        time.sleep(0.2)
    raise AssertionError(f"job {job} not {state} after {timeout} s: {line!r}")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def test_time_limit_ends_in_timeout(slurm_cluster, timeout_job):
    # Time limits are whole minutes and checked every ~30 s: TIMEOUT comes 60-90 s after start.
    assert slurm_cluster.wait_state(timeout_job, {"TIMEOUT", "COMPLETED", "FAILED"}, timeout=150) == "TIMEOUT"
