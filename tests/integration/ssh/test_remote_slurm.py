"""An SSH target whose host submits to its own SLURM: the SSH test host runs munged, slurmctld and
slurmd in its namespaces (tests/ssh_slurm_host.py), and `repxctl run --target` sends the Lab there,
submits with the remote's sbatch, and brings the results back."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from cli import repxctl
from conftest import require_program, require_system
from definitions import HEADER, build
from service import Daemon
from ssh_host import ALIAS, SshHost
from ssh_slurm_host import NamespacedSlurmCluster, missing_programs, start_cluster_on

from repxd.engine.embedded import (
    EmbeddedRun,
    ExecutionOptions,
    base_path_for,
    open_lab,
    plan_run,
    resolve_target,
)
from repxd.exec.layout import OutputLayout
from repxd.lab.writer import ImageSpec, LabWriter
from repxd.targets.ssh.connection import SshConnection
from repxd.targets.ssh.target import SshTarget
from repxd.user_config import load_config

from .test_ssh_target import SELECTION, Remote, local_out_files, slow_lab, wait_for


@pytest.fixture(scope="module")
def remote_cluster(ssh_host: SshHost) -> NamespacedSlurmCluster:
    require_system(missing_programs(), "apt install slurm-wlm munge",
                   root_because="the SLURM daemons on the SSH test host run as root")
    cluster = start_cluster_on(ssh_host, Path(tempfile.mkdtemp(prefix="slurm-", dir=ssh_host.workdir)))
    yield cluster
    cluster.stop()


def slurm_target_config(path: Path, host: SshHost, base: str) -> Path:
    """Upstream's shape of a cluster target: an address and `default_scheduler = "slurm"`."""
    path.write_text(f'[targets.remote]\naddress = "{ALIAS}"\nbase_path = "{base}"\ndefault_scheduler = "slurm"\n'
                    "[targets.remote.slurm]\npoll_interval = 0.5\nsubmit_window = 0.2\n"
                    f'[targets.remote.ssh]\nconfig_file = "{host.ssh_config}"\n')
    return path


@pytest.fixture
def remote(ssh_host, remote_cluster, tmp_path) -> Remote:
    require_program("rsync")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(ssh_host.ssh_config, home / ".ssh" / "config")
    base = f"~/{tmp_path.name}"
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}  # no cluster is reachable from here
    config = slurm_target_config(tmp_path / "config.toml", ssh_host, base)
    return Remote(ssh_host, base, config, env, tmp_path / "state" / "repx" / "targets" / "remote")


@pytest.mark.parametrize("name", ["simple", "sweep-scatter"])
def test_example_lab_runs_on_the_remote_slurm_like_locally(remote, remote_cluster, tmp_path, name):
    lab = build(name, tmp_path / "lab")
    submitted = len(remote_cluster.submissions())
    result = remote.run(SELECTION[name], "--lab", lab, "--json", timeout=180)
    assert result.code == 0, result.stderr + result.stdout
    summary = result.json()
    assert summary["ok"] and summary["executed"] == summary["selected"] > 0

    # The remote's slurmctld took the batch jobs (at most one sbatch per process: a scatter-gather
    # job has several); this machine has no SLURM configuration, so no sbatch went anywhere else.
    sbatches = len(remote_cluster.submissions()) - submitted
    processes = list((remote.mirror / "outputs").rglob("stdout.log"))
    assert 0 < sbatches <= len(processes)

    local = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", tmp_path / "local", "--json")
    assert local.code == 0, local.stderr
    expected = local_out_files(tmp_path / "local" / "outputs")
    assert expected and remote.out_files() == expected
    # Written by the remote account through SLURM (slurmd runs the job as the submitting user).
    owners = remote.host.ssh(f"stat -c %U {remote.base}/outputs/*/out").stdout.split()
    assert set(owners) == {remote.host.user}

    pulled = repxctl("pull", SELECTION[name], "--lab", lab, "--target", "remote", "--config", remote.config,
                     env=remote.env)
    assert pulled.code == 0, pulled.stderr
    assert local_out_files(remote.mirror / "outputs") == expected
    mirrored = (remote.mirror / "outputs" / "completions.jsonl").read_text().splitlines()
    assert len(mirrored) == summary["selected"]
    assert remote.completions() == mirrored
    assert remote.markers() == {(job, "SUCCESS") for job in (json.loads(line)["id"] for line in mirrored)}

    again = remote.run(SELECTION[name], "--lab", lab, "--json")
    assert again.code == 0 and again.json()["executed"] == 0
    assert len(remote_cluster.submissions()) - submitted == sbatches



def test_parallel_jobs_go_to_the_remote_slurm_in_one_sbatch(remote, remote_cluster, tmp_path):
    """Four independent jobs are ready at once: one remote command stages their files and
    submits them as one array; a failing one leaves its FAIL marker and its log, read back."""
    writer = LabWriter(git_hash="5107b47c" * 5)
    run = writer.run("parallel")
    for index in range(3):
        run.job(f"fine{index}", HEADER + f'echo {index} > "$out/n.txt"\n', outputs={"n": "$out/n.txt"})
    run.job("broken", HEADER + "echo broken >&2\nexit 3\n", outputs={"n": "$out/n.txt"})
    submitted = len(remote_cluster.submissions())
    result = remote.run("parallel", "--lab", writer.write(tmp_path / "lab"), "--json", "--continue-on-failure")
    assert result.code == 1, result.stderr + result.stdout
    assert len(remote_cluster.submissions()) - submitted == 1
    markers = dict(remote.markers())
    assert sorted(markers.values()) == ["FAIL", "SUCCESS", "SUCCESS", "SUCCESS"]
    failed = next(job for job, marker in markers.items() if marker == "FAIL")
    assert "-broken-" in failed
    assert remote.host.ssh(f"cat {remote.base}/outputs/{failed}/repx/stderr.log").stdout.splitlines() == ["broken"]
    # What the job wrote on the remote came back with the poll that saw it end.
    assert (remote.mirror / "outputs" / failed / "repx" / "stderr.log").read_text().startswith("broken\n")


def test_the_daemon_runs_the_example_on_the_remote_slurm(remote, remote_cluster, tmp_path):
    daemon = Daemon.create(extra=slurm_target_config(tmp_path / "unused.toml", remote.host, remote.base).read_text())
    daemon.env = remote.env
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        lab = build("simple", tmp_path / "lab")
        submitted = len(remote_cluster.submissions())
        result = repxctl("run", SELECTION["simple"], "--lab", lab, "--target", "remote", "--json", env=env, timeout=180)
        assert result.code == 0, result.stderr + daemon.logs()
        assert result.json()["state"] == "succeeded", result.stdout
        assert len(remote_cluster.submissions()) > submitted
        local = repxctl("run", SELECTION["simple"], "--lab", lab, "--base-path", tmp_path / "local", "--json")
        assert local.code == 0, local.stderr
        assert remote.out_files() == local_out_files(tmp_path / "local" / "outputs")
        succeeded = {(p.parts[-3], "SUCCESS") for p in (tmp_path / "local").glob("outputs/*/repx/SUCCESS")}
        wait_for(lambda: remote.markers() == succeeded, 10, "the markers on the remote")
    finally:
        daemon.stop()


def test_killed_repx_reattaches_to_the_remote_slurm_jobs(remote, remote_cluster, tmp_path):
    """repx killed while its batch jobs run on the remote: run again, it follows the jobs it
    submitted (recorded beside their guards) instead of submitting them again."""
    lab = slow_lab(tmp_path / "lab", seconds=4)
    submitted = len(remote_cluster.submissions())
    proc = remote.popen("slow", "--lab", lab, "--json")
    wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before_rerun = len(remote_cluster.submissions())
    result = remote.run("slow", "--lab", lab, "--json", timeout=180)
    assert result.code == 0, result.stderr
    assert result.json()["ok"]
    executions = remote.executions()
    assert sorted(executions) == sorted(set(executions)) and len(executions) == 3
    # At most the last stage was left to submit by the second run (the first may have chained it).
    assert len(remote_cluster.submissions()) - before_rerun <= 1
    assert before_rerun > submitted


def test_a_cut_link_is_waited_out_and_no_slurm_job_runs_twice(remote, tmp_path):
    lab = slow_lab(tmp_path / "lab", seconds=4)
    proc = remote.popen("slow", "--lab", lab, "--json")
    wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
    remote.host.cut_link()
    try:
        time.sleep(8)  # the first jobs end on the remote cluster while the link is down
        assert proc.poll() is None, proc.communicate()
    finally:
        remote.host.restore_link()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    executions = remote.executions()
    assert sorted(executions) == sorted(set(executions)) and len(executions) == 3


def test_a_submission_whose_answer_the_link_lost_is_not_submitted_twice(remote, remote_cluster, tmp_path):
    """The link is cut while the remote sbatch works: repx's wait for the answer times out and it
    asks again with the same token once the host is back; the remote gives the first
    submission's answer instead of submitting again."""
    config = load_config(remote.config)
    name, target = resolve_target(config, "remote")
    submitted = len(remote_cluster.submissions())

    async def scenario():
        ssh = SshTarget(name, target, OutputLayout(tmp_path / "mirror"))
        launcher = await ssh.open()
        loop = asyncio.get_running_loop()
        try:
            commands = launcher.commands
            commands.retry_interval = 0.5
            cut = loop.call_later(1, remote.host.cut_link)
            restore = loop.call_later(5, remote.host.restore_link)
            try:
                # Each try gives up after 2 s, before the slow sbatch answers: only the answer
                # kept under the token ends the tries (60 s: the test fails rather than hangs).
                return await asyncio.wait_for(commands.run(["sbatch", "--parsable", "--output=/dev/null"],
                                                           stdin="#!/bin/sh\ntrue\n", timeout=2), 60)
            finally:
                cut.cancel()
                restore.cancel()
                remote.host.restore_link()
        finally:
            await ssh.close()

    with remote_cluster.slow_sbatch(3) as calls:
        result = asyncio.run(scenario())
    assert result.ok, result.failure()
    assert len(calls.read_text().splitlines()) == 1  # sbatch ran once on the remote
    accepted = remote_cluster.submissions()[submitted:]
    assert len(accepted) == 1
    assert f"JobId={result.stdout.strip()} " in accepted[0]


def test_remote_commands_per_poll_do_not_grow_with_the_jobs(remote, tmp_path, monkeypatch):
    """Every remote command of a sweep on the remote SLURM, recorded at the SSH connection: per
    poll one squeue for all followed jobs and at most one command fetching the ended ones'
    files; submissions in arrays, far fewer than processes."""
    for key in ("HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, remote.env[key])
    commands: list[tuple[list[str], str | None]] = []
    real_run = SshConnection.run

    async def recorded(self, argv, stdin=None, timeout=120.0, identity=None):
        commands.append((list(argv), stdin))
        return await real_run(self, argv, stdin=stdin, timeout=timeout, identity=identity)

    monkeypatch.setattr(SshConnection, "run", recorded)
    name, target = resolve_target(load_config(remote.config), "remote")
    base = base_path_for(target, None)
    lab = open_lab(build("sweep-scatter", tmp_path / "lab"), base)
    run = EmbeddedRun(plan_run(lab, base, ["sweep"], name, target), ExecutionOptions())
    run.prepare()
    started = time.monotonic()
    summary = asyncio.run(run.run())
    seconds = time.monotonic() - started
    assert summary.ok
    processes = list((base / "outputs").rglob("stdout.log"))
    queries = [argv for argv, _ in commands if argv[0] == "squeue"]
    fetches = [stdin.splitlines() for argv, stdin in commands if argv[:1] == ["sh"] and argv[2:3] == ["fetch"]]
    submissions = [argv for argv, _ in commands if argv[:1] == ["sh"] and argv[2:3] == ["submit"]]
    polls = seconds / target.slurm.poll_interval + 1
    assert len(queries) <= polls and len(fetches) <= len(queries)
    assert max(len(listing) for listing in fetches) >= 2  # a stage's ended jobs in one command
    assert len(submissions) < len(processes)


def test_a_host_without_sbatch_is_one_line_and_nothing_runs(remote, remote_cluster, tmp_path):
    lab = build("simple", tmp_path / "lab")
    with remote_cluster.without_sbatch():
        result = remote.run(SELECTION["simple"], "--lab", lab)
    assert result.code == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("repxctl: error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "'remote'" in lines[0] and "sbatch" in lines[0] and 'default_scheduler = "local"' in lines[0]
    assert remote.markers() == set()


def test_an_image_job_on_the_remote_slurm_is_refused_with_one_line(remote, remote_cluster, tmp_path):
    """Images on the host's SLURM are not supported yet: said before anything is sent or submitted."""
    rootfs = tmp_path / "rootfs" / "etc"
    rootfs.mkdir(parents=True)
    (rootfs / "hostname").write_text("image\n")
    writer = LabWriter(git_hash="1a6e51a7" * 5)
    writer.run("probe", image=ImageSpec(rootfs.parent, "localhost/repx-probe:test")).job(
        "probe", HEADER + 'echo ran > "$out/ran.txt"\n', outputs={"ran": "$out/ran.txt"})
    submitted = len(remote_cluster.submissions())
    result = remote.run("probe", "--lab", writer.write(tmp_path / "lab"), "--runtime", "bwrap")
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("repxctl: error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "'remote'" in lines[0] and "natively only" in lines[0] and "bwrap" in lines[0]
    assert len(remote_cluster.submissions()) == submitted
    assert remote.host.ssh(f"ls {remote.base}/outputs", check=False).stdout.strip() == ""
