"""Labs on a real SLURM cluster (munge, slurmctld, slurmd, slurmdbd on MariaDB; the `slurm_cluster`
fixture), embedded and through the daemon: outputs as a local run makes them, stages submitted as
arrays, one status query per poll, cancel, limits reported with their reason, restarts of repx and
of slurmctld, and a node going down mid-run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import repxctl
from counted_commands import CountedCommands
from definitions import HEADER, simple, sweep_scatter
from service import Daemon
from test_scatter_failure import failing_branch_lab

from repxd.lab.writer import LabWriter

POLL = 0.5


def slurm_config(root: Path, cluster, base: Path, extra: str = "") -> Path:
    config = root / "config.toml"
    config.write_text(f'[targets.hpc]\nbase_path = "{base}"\ndefault_scheduler = "slurm"\n'
                      f'[targets.hpc.slurm]\npoll_interval = {POLL}\nsubmit_window = 0.3\n{extra}')
    return config


def out_files(base: Path) -> dict[str, bytes]:
    """Every file jobs wrote under out/ (not logs, which name paths and hosts)."""
    outputs = base / "outputs"
    return {p.relative_to(outputs).as_posix(): p.read_bytes() for p in outputs.rglob("*")
            if p.is_file() and "/out/" in p.relative_to(outputs).as_posix()}


COUNTED = ("sbatch", "sacct", "squeue", "scancel")


@pytest.fixture
def counted(slurm_cluster, tmp_path):
    return CountedCommands(tmp_path, slurm_cluster.env, COUNTED)


@pytest.mark.parametrize("name,builder,selection,jobs", [("simple", simple, "@all", 4), ("sweep", sweep_scatter, "sweep", 7)])
def test_examples_run_embedded_on_slurm_as_they_run_locally(slurm_cluster, counted, tmp_path, name, builder, selection, jobs):
    lab = builder().write(tmp_path / "lab")
    local = repxctl("run", selection, "--lab", lab, "--base-path", tmp_path / "local", "--json")
    assert local.code == 0, local.stderr
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    result = repxctl("run", selection, "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env)
    assert result.code == 0, result.stderr + slurm_cluster.logs()
    summary = result.json()
    assert summary["ok"] and summary["executed"] == jobs
    assert out_files(tmp_path / "hpc") == out_files(tmp_path / "local")
    # Every job went through SLURM: its accounting knows our batch jobs, and they all completed.
    submitted = [line for line in counted.calls("sbatch")]
    assert submitted, "nothing was submitted to SLURM"
    def accounted() -> list[str]:  # slurmdbd records a job's name a few seconds after it ends
        names = slurm_cluster.run("sacct", "--noheader", "--parsable2", "--allocations", "--starttime=now-1hour",
                                  "--format=JobName,State").stdout.splitlines()
        ours = [line for line in names if line.startswith("repx.")]
        return ours if len(ours) >= len(submitted) and all(line.endswith("|COMPLETED") for line in ours) else []

    wait_for("SLURM's accounting to list our jobs as COMPLETED", accounted, 30)
    # Nothing runs twice when asked again: the markers say done.
    again = repxctl("run", selection, "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env)
    assert again.code == 0 and again.json()["executed"] == 0
    assert len(counted.calls("sbatch")) == len(submitted)


def fan_out_lab(root: Path, width: int) -> Path:
    writer = LabWriter()
    run = writer.run("fan")
    seed = run.job("seed", HEADER + 'echo 3 > "$out/n"\n', outputs={"n": "$out/n"})
    for i in range(width):
        run.job(f"square-{i}", HEADER + f'n=$(cat "$(get n "$inputs")")\necho $(( n * n + {i} )) > "$out/sq"\n',
                outputs={"sq": "$out/sq"}, inputs={"n": seed.output("n")})
    return writer.write(root / "fan-lab")


def test_a_stage_goes_in_as_arrays_and_status_is_one_query_per_poll(slurm_cluster, counted, tmp_path):
    width = 24
    lab = fan_out_lab(tmp_path, width)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc", "max_array_size = 10\narray_throttle = 4\n")
    started = time.monotonic()
    result = repxctl("run", "fan", "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.stderr + slurm_cluster.logs()
    values = sorted(int(p.read_text()) for p in (tmp_path / "hpc" / "outputs").glob("*/out/sq"))
    assert values == sorted(9 + i for i in range(width))
    sbatch = counted.calls("sbatch")
    # the seed alone, then 24 ready squares as arrays of at most 10 tasks, throttled to 4 at once
    assert len(sbatch) == 1 + 3, sbatch
    arrays = [line for line in sbatch if "--array=" in line]
    assert sorted(a.split("--array=")[1].split()[0] for a in arrays) == ["0-3%4", "0-9%4", "0-9%4"]
    # one status query per poll interval, whatever the number of jobs followed
    status = counted.calls("sacct") + counted.calls("squeue")
    assert len(status) <= elapsed / POLL + 2, (len(status), elapsed)


def sleeper_lab(root: Path, seconds: int, name: str = "sleeper") -> Path:
    writer = LabWriter()
    writer.run(name).job("nap", f'#!/bin/sh\nsleep {seconds}\necho rested > "$1/done"\n', outputs={"done": "$out/done"})
    return writer.write(root / f"{name}-lab")


def our_queue(cluster) -> list[str]:
    lines = cluster.run("squeue", "--noheader", "--format=%i|%j|%T").stdout.splitlines()
    return [line for line in lines if "|repx." in line]


def wait_for(what: str, probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_ctrl_c_cancels_the_slurm_jobs_the_run_submitted(slurm_cluster, counted, tmp_path):
    lab = sleeper_lab(tmp_path, 300)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    proc = subprocess.Popen(["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "hpc"],
                            env=counted.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    queued = wait_for("the job in squeue", lambda: [q for q in our_queue(slurm_cluster) if q.endswith("RUNNING")])
    slurm_id = queued[0].split("|")[0]
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert counted.calls("scancel"), "repxctl did not cancel its SLURM job"
    wait_for("the job to leave squeue", lambda: not our_queue(slurm_cluster), 30)
    state = slurm_cluster.run("sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={slurm_id}",
                              "--format=State").stdout.split()
    assert state and state[0].startswith("CANCELLED")
    assert not list((tmp_path / "hpc" / "outputs").glob("*/repx/SUCCESS"))


def limits_lab(root: Path) -> Path:
    writer = LabWriter()
    run = writer.run("limits")
    run.job("hog", '#!/bin/sh\npython3 -c "import time; b = bytearray(600 << 20); b[::4096] = b\'x\' * len(b[::4096]); time.sleep(30)"\n',
            outputs={})
    run.job("overrun", '#!/bin/sh\nsleep 600\n', outputs={})
    return writer.write(root / "limits-lab")


def test_memory_and_time_limits_are_reported_with_their_reason(slurm_cluster, tmp_path):
    lab = limits_lab(tmp_path)
    (tmp_path / "resources.toml").write_text(
        '[[rules]]\njob_id_glob = "*-hog-*"\nmem = "100M"\n'
        '[[rules]]\njob_id_glob = "*-overrun-*"\ntime = "00:00:05"\n')
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    result = repxctl("run", "limits", "--lab", lab, "--config", config, "--target", "hpc", "--continue-on-failure",
                     "--resources", tmp_path / "resources.toml", "--json", env=slurm_cluster.env, timeout=400)
    assert result.code != 0
    failed = result.json()["failed"]
    hog = next(reason for job, reason in failed.items() if "-hog-" in job)
    overrun = next(reason for job, reason in failed.items() if "-overrun-" in job)
    assert "memory limit" in hog and "OUT_OF_MEMORY" in hog
    assert "time limit" in overrun and "TIMEOUT" in overrun
    shown = repxctl("log", next(j for j in failed if "-hog-" in j), "--stderr", "--lab", lab, "--config", config,
                    "--target", "hpc", env=slurm_cluster.env)
    assert "exceeded memory limit" in shown.stdout and "OUT_OF_MEMORY" in shown.stdout, shown.stdout + shown.stderr


def recorded_ids(base: Path, scheduler: str) -> list[str]:
    """The scheduler ids repx recorded beside its guards under `base` (not mere submission intents)."""
    return [text for record in (base / "cache" / "guards").glob(f"*.{scheduler}")
            if (text := record.read_text().strip()) and not text.startswith("submitting")]


@pytest.mark.parametrize("answer_delay", [0, 30], ids=["after-the-id-was-recorded", "before-repx-heard-the-id"])
def test_repx_killed_mid_run_follows_its_slurm_job_instead_of_submitting_again(slurm_cluster, tmp_path, answer_delay):
    counted = CountedCommands(tmp_path, slurm_cluster.env, COUNTED, answers=("sbatch",), answer_delay=answer_delay)
    lab = sleeper_lab(tmp_path, 8)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    argv = ["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "hpc", "--json"]
    first = subprocess.Popen(argv, env=counted.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("the job in squeue", lambda: our_queue(slurm_cluster))
    if not answer_delay:
        wait_for("the job's id recorded", lambda: recorded_ids(tmp_path / "hpc", "slurm"))
    first.kill()
    first.wait()
    assert our_queue(slurm_cluster), "the SLURM job must outlive the repx that submitted it"
    second = subprocess.run(argv, env=counted.env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert len(counted.calls("sbatch")) == 1, counted.calls("sbatch")
    (done,) = (tmp_path / "hpc" / "outputs").glob("*/out/done")
    assert done.read_text() == "rested\n"


def test_the_run_completes_across_a_slurmctld_restart(slurm_cluster, counted, tmp_path):
    lab = sleeper_lab(tmp_path, 6)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    proc = subprocess.Popen(["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "hpc",
                             "--json"], env=counted.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("the job running", lambda: [q for q in our_queue(slurm_cluster) if q.endswith("RUNNING")])
    slurm_cluster.restart_controller()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err + slurm_cluster.logs()
    assert json.loads(out)["ok"]
    assert len(counted.calls("sbatch")) == 1


def test_a_node_going_down_mid_run_is_reported_and_the_job_runs_again(slurm_cluster, counted, tmp_path):
    lab = sleeper_lab(tmp_path, 20)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    proc = subprocess.Popen(["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "hpc",
                             "--json"], env=counted.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_for("the job running", lambda: [q for q in our_queue(slurm_cluster) if q.endswith("RUNNING")])
    node = slurm_cluster.run("squeue", "--noheader", f"--jobs={running[0].split('|')[0]}", "--format=%N").stdout.strip()
    try:
        slurm_cluster.set_node_state(node, "DOWN", "repx test: node lost")
        out, err = proc.communicate(timeout=240)
    finally:  # the node may be back already (ReturnToService=2): RESUME is then refused, harmlessly
        slurm_cluster.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
    assert proc.returncode == 0, err + slurm_cluster.logs()
    assert len(counted.calls("sbatch")) == 2, counted.calls("sbatch")
    (stderr_log,) = (tmp_path / "hpc" / "outputs").glob("*/repx/stderr.log")
    assert "NODE_FAIL" in stderr_log.read_text() and "submitting it again" in stderr_log.read_text()
    slurm_cluster.wait_nodes_idle()


def test_the_daemon_runs_the_examples_on_slurm(slurm_cluster, counted, tmp_path):
    daemon = Daemon.create(extra=f'[targets.hpc]\nbase_path = "{tmp_path / "hpc"}"\ndefault_scheduler = "slurm"\n'
                                 f'[targets.hpc.slurm]\npoll_interval = {POLL}\nsubmit_window = 0.3\n')
    daemon.env = {**counted.env}
    daemon.start("all")
    try:
        env = {**counted.env, "REPX_API": str(daemon.socket)}
        for name, builder, selection, jobs in (("simple", simple, "@all", 4), ("sweep", sweep_scatter, "sweep", 7)):
            lab = builder().write(tmp_path / name)
            result = repxctl("run", selection, "--lab", lab, "--target", "hpc", "--json", env=env, timeout=120)
            assert result.code == 0, result.stderr + daemon.logs()
            run = result.json()
            assert run["state"] == "succeeded" and run["counts"] == {"succeeded": jobs}, run
            local = repxctl("run", selection, "--lab", lab, "--base-path", tmp_path / f"local-{name}", "--json",
                            env={k: v for k, v in env.items() if k != "REPX_API"})
            assert local.code == 0, local.stderr
        assert counted.calls("sbatch")
        hpc = out_files(tmp_path / "hpc")
        local = {**out_files(tmp_path / "local-simple"), **out_files(tmp_path / "local-sweep")}
        assert hpc == local
    finally:
        daemon.stop()


def hpc_daemon(counted, base: Path) -> Daemon:
    daemon = Daemon.create(extra=f'[targets.hpc]\nbase_path = "{base}"\ndefault_scheduler = "slurm"\n'
                                 f'[targets.hpc.slurm]\npoll_interval = {POLL}\nsubmit_window = 0.3\n')
    daemon.env = {**counted.env}
    return daemon


def run_state(env: dict, run_id: str) -> str:
    return json.loads(repxctl("runs", run_id, "--json", env=env).stdout)["state"]


def test_cancelling_a_daemon_run_cancels_its_slurm_jobs(slurm_cluster, counted, tmp_path):
    daemon = hpc_daemon(counted, tmp_path / "hpc")
    daemon.start("all")
    try:
        env = {**counted.env, "REPX_API": str(daemon.socket)}
        lab = sleeper_lab(tmp_path, 300)
        run_id = repxctl("run", "sleeper", "--lab", lab, "--target", "hpc", "--detach", env=env).stdout.strip()
        queued = wait_for("the job running in SLURM", lambda: [q for q in our_queue(slurm_cluster) if q.endswith("RUNNING")])
        assert repxctl("cancel", run_id, env=env).code == 0
        wait_for("the run to end", lambda: run_state(env, run_id) not in ("active", "cancelling"), 60)
        assert run_state(env, run_id) == "cancelled"
        wait_for("the job to leave squeue", lambda: not our_queue(slurm_cluster), 30)
        assert slurm_cluster.wait_state(queued[0].split("|")[0], {"CANCELLED"}, 30).startswith("CANCELLED")
        assert counted.calls("scancel")
    finally:
        daemon.stop()


def test_a_daemon_killed_mid_run_reattaches_to_its_slurm_jobs(slurm_cluster, counted, tmp_path):
    daemon = hpc_daemon(counted, tmp_path / "hpc")
    daemon.start("all")
    try:
        env = {**counted.env, "REPX_API": str(daemon.socket)}
        lab = sleeper_lab(tmp_path, 10)
        run_id = repxctl("run", "sleeper", "--lab", lab, "--target", "hpc", "--detach", env=env).stdout.strip()
        wait_for("the job running in SLURM", lambda: [q for q in our_queue(slurm_cluster) if q.endswith("RUNNING")])
        daemon.kill("all")
        daemon.start("all")
        wait_for("the run to end", lambda: run_state(env, run_id) not in ("active", "cancelling"), 120)
        assert run_state(env, run_id) == "succeeded", daemon.logs()
        assert len(counted.calls("sbatch")) == 1, counted.calls("sbatch")
        (done,) = (tmp_path / "hpc" / "outputs").glob("*/out/done")
        assert done.read_text() == "rested\n"
    finally:
        daemon.stop()


def test_a_failed_branch_cancels_the_rest_of_its_stage_in_slurm(slurm_cluster, counted, tmp_path):
    lab = failing_branch_lab(tmp_path)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    result = repxctl("run", "stage", "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env,
                     timeout=120)
    assert result.code == 1, result.stderr
    (reason,) = result.json()["failed"].values()
    assert "exited with status 4" in reason and "1 other branch stopped" in reason
    assert counted.calls("scancel"), "the sleeping branch's SLURM job was not cancelled"
    wait_for("nothing of ours left in squeue", lambda: not our_queue(slurm_cluster), 30)


def chain_lab(root: Path, first_fails: bool) -> Path:
    """first -> second -> third, each reading its predecessor's output."""
    writer = LabWriter()
    run = writer.run("chain")
    first = run.job("first", HEADER + f'sleep 3\necho 1 > "$out/v"\n{"exit 5" if first_fails else ""}\n',
                    outputs={"v": "$out/v"})
    second = run.job("second", HEADER + 'echo $(( $(cat "$(get v "$inputs")") + 1 )) > "$out/v"\n',
                     inputs={"v": first.output("v")}, outputs={"v": "$out/v"})
    run.job("third", HEADER + 'echo $(( $(cat "$(get v "$inputs")") + 1 )) > "$out/v"\n',
            inputs={"v": second.output("v")}, outputs={"v": "$out/v"})
    return writer.write(root / ("failing-chain" if first_fails else "chain"))


def test_later_stages_wait_in_slurm_with_afterok_instead_of_a_poll_each(slurm_cluster, counted, tmp_path):
    lab = chain_lab(tmp_path, first_fails=False)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    result = repxctl("run", "chain", "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env)
    assert result.code == 0, result.stderr + slurm_cluster.logs()
    (third,) = (tmp_path / "hpc" / "outputs").glob("*-third-1.0/out/v")
    assert third.read_text() == "3\n"
    sbatch = counted.calls("sbatch")
    assert len(sbatch) == 3
    # second and third went in while first still ran, each held by SLURM until its input succeeded
    assert ["--dependency=afterok:" in line for line in sbatch] == [False, True, True], sbatch
    assert all("--kill-on-invalid-dep=yes" in line for line in sbatch[1:])


def test_a_failed_stage_blocks_the_stages_waiting_for_it_in_slurm(slurm_cluster, counted, tmp_path):
    lab = chain_lab(tmp_path, first_fails=True)
    config = slurm_config(tmp_path, slurm_cluster, tmp_path / "hpc")
    result = repxctl("run", "chain", "--lab", lab, "--config", config, "--target", "hpc", "--json", env=counted.env)
    assert result.code == 1, result.stderr
    summary = result.json()
    assert [job.split("-")[1] for job in summary["failed"]] == ["first"]
    assert sorted(job.split("-")[1] for job in summary["blocked"]) == ["second", "third"], summary
    wait_for("nothing of ours left in squeue", lambda: not our_queue(slurm_cluster), 30)
    assert not list((tmp_path / "hpc" / "outputs").glob("*-second-1.0/out/v"))
