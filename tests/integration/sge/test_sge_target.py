"""Labs on a real Grid Engine (sge_qmaster + sge_execd; the `sge_cluster` fixture), embedded: outputs
as a local run makes them, a stage submitted as arrays, a failing job's reason, Ctrl-C -> qdel, and
a repx killed mid-run following its job instead of submitting it again."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import repxctl
from counted_commands import CountedCommands
from definitions import HEADER, simple, sweep_scatter
from service import Daemon
from slurm.test_slurm_target import fan_out_lab, out_files, recorded_ids, sleeper_lab, wait_for

from repxd.lab.writer import LabWriter
from repxd.targets.cluster import Phase
from repxd.targets.sge.accounting import master_id, parse_qacct, parse_qstat_xml

POLL = 0.5


@pytest.fixture
def counted(sge_cluster, tmp_path):
    return CountedCommands(tmp_path, sge_cluster.env, ("qsub", "qstat", "qacct", "qdel"), answers=("qsub",))


def sge_config(root: Path, base: Path, extra: str = "") -> Path:
    config = root / "config.toml"
    config.write_text(f'[targets.grid]\nbase_path = "{base}"\ndefault_scheduler = "sge"\n'
                      f'[targets.grid.sge]\npoll_interval = {POLL}\nsubmit_window = 0.3\n{extra}')
    return config


def our_jobs(cluster) -> dict[str, str]:
    """Grid Engine id -> state letters of every job qstat lists (all users)."""
    return {k: s.state for k, s in parse_qstat_xml(cluster.run("qstat", "-xml", "-u", "*")).items()}


@pytest.mark.parametrize("builder,selection,jobs", [(simple, "@all", 4), (sweep_scatter, "sweep", 7)])
def test_examples_run_embedded_on_grid_engine_as_they_run_locally(sge_cluster, counted, tmp_path, builder, selection, jobs):
    lab = builder().write(tmp_path / "lab")
    local = repxctl("run", selection, "--lab", lab, "--base-path", tmp_path / "local", "--json", env=counted.env)
    assert local.code == 0, local.stderr
    config = sge_config(tmp_path, tmp_path / "grid")
    result = repxctl("run", selection, "--lab", lab, "--config", config, "--target", "grid", "--json", env=counted.env)
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["ok"] and summary["executed"] == jobs
    assert out_files(tmp_path / "grid") == out_files(tmp_path / "local")
    submitted = counted.calls("qsub")
    assert submitted, "nothing was submitted to Grid Engine"
    # Grid Engine's accounting (written up to 15 s late) has every task we submitted, each ended with status 0.
    numbers = [master_id(line.split()[1]) for line in counted.calls("submitted")]
    tasks = sum(int(line.split(" -t 1-")[1].split()[0]) for line in submitted)

    def accounted() -> list:
        states = []
        for number in numbers:
            done = subprocess.run(["qacct", "-j", number], env=sge_cluster.env, capture_output=True, text=True)
            states += parse_qacct(done.stdout).values() if done.returncode == 0 else []
        return states if len(states) == tasks else []

    assert all(s.phase is Phase.ENDED and s.exit_code == 0 for s in wait_for("qacct to list every task", accounted, 40))
    again = repxctl("run", selection, "--lab", lab, "--config", config, "--target", "grid", "--json", env=counted.env)
    assert again.code == 0 and again.json()["executed"] == 0
    assert len(counted.calls("qsub")) == len(submitted)


def test_a_stage_goes_in_as_arrays_with_a_throttle(sge_cluster, counted, tmp_path):
    width = 12
    lab = fan_out_lab(tmp_path, width)
    config = sge_config(tmp_path, tmp_path / "grid", "max_array_size = 5\narray_throttle = 3\n")
    started = time.monotonic()
    result = repxctl("run", "fan", "--lab", lab, "--config", config, "--target", "grid", "--json", env=counted.env)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.stderr
    values = sorted(int(p.read_text()) for p in (tmp_path / "grid" / "outputs").glob("*/out/sq"))
    assert values == sorted(9 + i for i in range(width))
    qsub = counted.calls("qsub")
    # the seed alone, then 12 ready squares as arrays of at most 5 tasks, 3 at once
    assert len(qsub) == 1 + 3, qsub
    assert sorted(line.split(" -t ")[1].split()[0] for line in qsub) == ["1-1", "1-2", "1-5", "1-5"]
    assert all("-tc 3" in line for line in qsub if "-t 1-1 " not in line)
    # one qstat per poll for all followed jobs, never one per job: how many polls a run takes
    # depends on how fast this machine runs the cluster, not on the number of jobs
    qstat = counted.calls("qstat")
    assert qstat and set(qstat) == {"qstat -xml -u *"}, qstat
    assert len(qstat) <= elapsed / POLL + 2, (len(qstat), elapsed)


def test_a_failing_job_fails_with_its_exit_status(sge_cluster, counted, tmp_path):
    writer = LabWriter()
    writer.run("broken").job("oops", HEADER + 'echo "about to fail" >&2\nexit 3\n', outputs={})
    lab = writer.write(tmp_path / "broken-lab")
    config = sge_config(tmp_path, tmp_path / "grid")
    result = repxctl("run", "broken", "--lab", lab, "--config", config, "--target", "grid", "--json", env=counted.env)
    assert result.code == 1, result.stderr
    (reason,) = result.json()["failed"].values()
    assert "exited with status 3" in reason, reason
    (stderr_log,) = (tmp_path / "grid" / "outputs").glob("*/repx/stderr.log")
    assert "about to fail" in stderr_log.read_text()
    assert len(counted.calls("qsub")) == 1  # a job's own failure is not resubmitted
    # Grid Engine's own output for the task went to the batch log directory, named JOB.TASK.out
    (number,) = [master_id(line.split()[1]) for line in counted.calls("submitted")]
    assert (tmp_path / "grid" / "cache" / "sge" / f"{number}.1.out").is_file()


def test_ctrl_c_deletes_the_grid_engine_job_the_run_submitted(sge_cluster, counted, tmp_path):
    lab = sleeper_lab(tmp_path, 300)
    config = sge_config(tmp_path, tmp_path / "grid")
    proc = subprocess.Popen(["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "grid"],
                            env=counted.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_for("the job running", lambda: [k for k, s in our_jobs(sge_cluster).items() if s == "r"])
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert any(running[0] in line for line in counted.calls("qdel")), counted.calls("qdel")
    wait_for("the job to leave qstat", lambda: not our_jobs(sge_cluster), 30)
    assert not list((tmp_path / "grid" / "outputs").glob("*/repx/SUCCESS"))


@pytest.mark.parametrize("answer_delay", [0, 30], ids=["after-the-id-was-recorded", "before-repx-heard-the-id"])
def test_repx_killed_mid_run_follows_its_grid_engine_job_instead_of_submitting_again(sge_cluster, tmp_path, answer_delay):
    counted = CountedCommands(tmp_path, sge_cluster.env, ("qsub", "qstat", "qacct", "qdel"), answers=("qsub",),
                              answer_delay=answer_delay)
    lab = sleeper_lab(tmp_path, 8)
    config = sge_config(tmp_path, tmp_path / "grid")
    argv = ["repxctl", "run", "sleeper", "--lab", str(lab), "--config", str(config), "--target", "grid", "--json"]
    first = subprocess.Popen(argv, env=counted.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("the job in qstat", lambda: our_jobs(sge_cluster))
    if not answer_delay:
        wait_for("the job's id recorded", lambda: recorded_ids(tmp_path / "grid", "sge"))
    first.kill()
    first.wait()
    assert our_jobs(sge_cluster), "the Grid Engine job must outlive the repx that submitted it"
    second = subprocess.run(argv, env=counted.env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert len(counted.calls("qsub")) == 1, counted.calls("qsub")
    (done,) = (tmp_path / "grid" / "outputs").glob("*/out/done")
    assert done.read_text() == "rested\n"


def test_a_job_over_its_time_limit_is_reported_with_that_reason(sge_cluster, counted, tmp_path):
    writer = LabWriter()
    writer.run("slow").job("overrun", "#!/bin/sh\nsleep 600\n", outputs={})
    lab = writer.write(tmp_path / "slow-lab")
    (tmp_path / "resources.toml").write_text('[[rules]]\njob_id_glob = "*-overrun-*"\ntime = "00:00:03"\n')
    config = sge_config(tmp_path, tmp_path / "grid")
    result = repxctl("run", "slow", "--lab", lab, "--config", config, "--target", "grid", "--resources",
                     tmp_path / "resources.toml", "--json", env=counted.env, timeout=180)
    assert result.code == 1, result.stderr
    (reason,) = result.json()["failed"].values()
    assert "time limit" in reason and "Grid Engine job" in reason, reason
    assert any("-l h_rt=3" in line for line in counted.calls("qsub")), counted.calls("qsub")


def test_the_daemon_runs_an_example_on_grid_engine(sge_cluster, counted, tmp_path):
    daemon = Daemon.create(extra=f'[targets.grid]\nbase_path = "{tmp_path / "grid"}"\ndefault_scheduler = "sge"\n'
                                 f'[targets.grid.sge]\npoll_interval = {POLL}\nsubmit_window = 0.3\n')
    daemon.env = {**counted.env}
    daemon.start("all")
    try:
        env = {**counted.env, "REPX_API": str(daemon.socket)}
        lab = simple().write(tmp_path / "lab")
        result = repxctl("run", "@all", "--lab", lab, "--target", "grid", "--json", env=env, timeout=180)
        assert result.code == 0, result.stderr + daemon.logs()
        run = result.json()
        assert run["state"] == "succeeded" and run["counts"] == {"succeeded": 4}, run
        local = repxctl("run", "@all", "--lab", lab, "--base-path", tmp_path / "local", "--json",
                        env={k: v for k, v in env.items() if k != "REPX_API"})
        assert local.code == 0, local.stderr
        assert counted.calls("qsub")
        assert out_files(tmp_path / "grid") == out_files(tmp_path / "local")
    finally:
        daemon.stop()
