"""Labs run on the SSH test host through `repxctl run --target`: the same outputs as a local run,
and runs that survive a cut link and a killed repx without running any job twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli import repxctl
from conftest import require_program
from definitions import HEADER, build
from service import Daemon
from ssh_host import ALIAS, SshHost

from repxd.engine.embedded import (
    EmbeddedRun,
    ExecutionOptions,
    base_path_for,
    open_lab,
    plan_run,
    resolve_target,
)
from repxd.lab.writer import LabWriter
from repxd.user_config import load_config

SELECTION = {"simple": "@all", "sweep-scatter": "sweep"}

# Each execution appends its job's directory to one remote file, outside every job's out/ (which
# a new attempt empties): the count of lines per job is how often it ran.
SLOW = HEADER + """echo "$out" >> "$out/../../executions.log"
sleep "$(get seconds "$params")"
echo done > "$out/done.txt"
"""

FILL = HEADER + """head -c 100000000 /dev/zero > "$out/big.bin"
echo done > "$out/done.txt"
"""


@dataclass
class Remote:
    host: SshHost
    base: str  # the target's base_path on the remote
    config: Path
    env: dict[str, str]
    mirror: Path

    def run(self, *args, **kwargs):
        return repxctl("run", *args, "--target", "remote", "--config", self.config, env=self.env, **kwargs)

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen([shutil.which("repxctl"), "run", *map(str, args), "--target", "remote",
                                 "--config", str(self.config)], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def out_files(self) -> dict[str, str]:
        """sha256 of every file under an out/ directory of the remote base's outputs."""
        listing = self.host.ssh(f"cd {self.base}/outputs && find . -path '*/out/*' -type f -exec sha256sum {{}} +").stdout
        return {path.removeprefix("./"): digest for digest, path in (line.split() for line in listing.splitlines())}

    def completions(self) -> list[str]:
        return self.host.ssh(f"cat {self.base}/outputs/completions.jsonl", check=False).stdout.splitlines()

    def markers(self) -> set[tuple[str, str]]:
        """(job, marker) of each job-level SUCCESS or FAIL under the remote base's outputs."""
        listing = self.host.ssh(f"cd {self.base}/outputs && ls -d */repx/SUCCESS */repx/FAIL", check=False).stdout
        return {(path.split("/")[0], path.split("/")[-1]) for path in listing.split()}

    def executions(self) -> list[str]:
        text = self.host.ssh(f"cat {self.base}/outputs/executions.log", check=False).stdout
        return [line.split("/outputs/")[1].split("/")[0] for line in text.splitlines()]


def target_config(path: Path, host: SshHost, base: str, poll: float = 0.3) -> Path:
    path.write_text(f'[targets.remote]\naddress = "{ALIAS}"\nbase_path = "{base}"\ndefault_scheduler = "local"\n'
                    f"[targets.remote.local]\npoll_interval = {poll}\n"
                    f'[targets.remote.ssh]\nconfig_file = "{host.ssh_config}"\n')
    return path


def target_daemon(remote: Remote, tmp_path: Path, **create) -> Daemon:
    """A daemon (not started) whose target `remote` is the SSH test host."""
    daemon = Daemon.create(extra=target_config(tmp_path / "unused.toml", remote.host, remote.base).read_text(), **create)
    daemon.env = remote.env
    return daemon


@pytest.fixture
def remote(ssh_host, tmp_path) -> Remote:
    require_program("rsync")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(ssh_host.ssh_config, home / ".ssh" / "config")
    base = f"~/{tmp_path.name}"  # the remote home: resolved there, not here
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    config = target_config(tmp_path / "config.toml", ssh_host, base)
    return Remote(ssh_host, base, config, env, tmp_path / "state" / "repx" / "targets" / "remote")


def local_out_files(outputs: Path) -> dict[str, str]:
    return {p.relative_to(outputs).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in outputs.rglob("*") if p.is_file() and "out" in p.relative_to(outputs).parts[:-1]}


@pytest.mark.parametrize("name", ["simple", "sweep-scatter"])
def test_example_lab_runs_on_the_remote_like_locally(remote, tmp_path, name):
    lab = build(name, tmp_path / "lab")
    result = remote.run(SELECTION[name], "--lab", lab, "--json")
    assert result.code == 0, result.stderr + result.stdout
    summary = result.json()
    assert summary["ok"] and summary["executed"] == summary["selected"] > 0

    local = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", tmp_path / "local", "--json")
    assert local.code == 0, local.stderr
    expected = local_out_files(tmp_path / "local" / "outputs")
    assert expected and remote.out_files() == expected
    pulled = repxctl("pull", SELECTION[name], "--lab", lab, "--target", "remote", "--config", remote.config,
                     env=remote.env)
    assert pulled.code == 0, pulled.stderr
    assert local_out_files(remote.mirror / "outputs") == expected  # beside the mirror's markers
    # The markers and the completion log are in the local mirror, and on the remote in upstream's layout.
    mirrored = (remote.mirror / "outputs" / "completions.jsonl").read_text().splitlines()
    assert len(mirrored) == summary["selected"]
    assert remote.completions() == mirrored
    assert remote.markers() == {(job, "SUCCESS") for job in (json.loads(line)["id"] for line in mirrored)}
    listed = repxctl("list", "jobs", "--lab", lab, "--target", "remote", "--config", remote.config, "--json",
                     env=remote.env).json()
    assert {row["status"] for row in listed} == {"Succeeded"}

    again = remote.run(SELECTION[name], "--lab", lab, "--json")
    assert again.code == 0 and again.json()["executed"] == 0


def slow_lab(dest: Path, seconds: int) -> Path:
    """Two parallel jobs of `seconds`, then one that needs both."""
    lab = LabWriter(git_hash="51075105" * 5)
    run = lab.run("slow")
    first = [run.job(f"first{i}", SLOW, params={"seconds": seconds, "i": i}, outputs={"done": "$out/done.txt"})
             for i in (1, 2)]
    run.job("second", SLOW, params={"seconds": 1}, outputs={"done": "$out/done.txt"},
            inputs={f"a{i}": job.output("done") for i, job in enumerate(first)})
    return lab.write(dest)


def run_state(env: dict, run_id: str) -> str:
    return json.loads(repxctl("runs", run_id, "--json", env=env).stdout)["state"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_run_survives_a_cut_link_and_runs_each_job_once(remote, tmp_path):
    lab = slow_lab(tmp_path / "lab", seconds=4)
    proc = remote.popen("slow", "--lab", lab, "--json")
    wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
    remote.host.cut_link()
    try:
        time.sleep(8)  # the first jobs end while the link is down
        assert proc.poll() is None, proc.communicate()  # repx waits for the host, fails nothing
    finally:
        remote.host.restore_link()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    executions = remote.executions()
    assert sorted(executions) == sorted(set(executions)) and len(executions) == 3


def test_killed_repx_reattaches_instead_of_running_again(remote, tmp_path):
    lab = slow_lab(tmp_path / "lab", seconds=4)
    proc = remote.popen("slow", "--lab", lab, "--json")
    wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = remote.run("slow", "--lab", lab, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["ok"]
    executions = remote.executions()
    assert sorted(executions) == sorted(set(executions)) and len(executions) == 3


def test_a_failing_job_leaves_its_fail_marker_on_the_remote(remote, tmp_path):
    writer = LabWriter(git_hash="fa11fa11" * 5)
    run = writer.run("failing")
    ok = run.job("fine", SLOW, params={"seconds": 0}, outputs={"done": "$out/done.txt"})
    run.job("broken", HEADER + "echo broken >&2\nexit 3\n", inputs={"done": ok.output("done")},
            outputs={"done": "$out/done.txt"})
    result = remote.run("failing", "--lab", writer.write(tmp_path / "lab"), "--json")
    assert result.code == 1, result.stderr
    # The run ends right after the failed job: its marker reached the remote all the same.
    markers = dict(remote.markers())
    assert sorted(markers.values()) == ["FAIL", "SUCCESS"]
    failed = next(job for job, marker in markers.items() if marker == "FAIL")
    assert "-broken-" in failed, markers
    assert [json.loads(line) for line in remote.completions()][-1] == {"id": failed, "s": "fail"}
    assert remote.host.ssh(f"cat {remote.base}/outputs/{failed}/repx/stderr.log").stdout.splitlines() == ["broken"]


def test_a_remote_disk_without_room_for_the_lab_is_refused_before_anything_runs(remote, tmp_path):
    small = remote.host.small_disk("1m")
    config = target_config(tmp_path / "small.toml", remote.host, f"{small}/base")
    result = repxctl("run", "@all", "--lab", build("simple", tmp_path / "lab"), "--target", "remote",
                     "--config", config, env=remote.env)
    assert result.code == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("repxctl: error:")]
    assert "remote disk full" in line and f"{small}/base" in line
    assert remote.host.ssh(f"ls -A {small}/base").stdout.split() == []  # no Lab, no outputs there


def test_a_job_filling_the_remote_disk_fails_saying_so(remote, tmp_path):
    small = remote.host.small_disk("80m")  # room for the bootstrap's 64 MiB, not for the job's 100 MB
    config = target_config(tmp_path / "small.toml", remote.host, f"{small}/base")
    writer = LabWriter(git_hash="f111f111" * 5)
    run = writer.run("fill")
    big = run.job("fill", FILL, outputs={"done": "$out/done.txt"})
    run.job("after", SLOW, params={"seconds": 0}, inputs={"done": big.output("done")}, outputs={"done": "$out/done.txt"})
    lab = writer.write(tmp_path / "lab")
    result = repxctl("run", "fill", "--lab", lab, "--target", "remote", "--config", config, env=remote.env)
    assert result.code == 1, result.stderr
    assert f"the remote disk is full (no space left under {small}/base/outputs)" in result.stdout
    # The dependent job was not run on the half-written output.
    assert "-after-" not in remote.host.ssh(f"ls {small}/base/outputs").stdout


def test_the_daemon_runs_the_examples_on_the_remote(remote, tmp_path):
    daemon = target_daemon(remote, tmp_path)
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        expected = {}
        for name in ("simple", "sweep-scatter"):
            lab = build(name, tmp_path / name)
            result = repxctl("run", SELECTION[name], "--lab", lab, "--target", "remote", "--json", env=env, timeout=120)
            assert result.code == 0, result.stderr + daemon.logs()
            assert result.json()["state"] == "succeeded", result.stdout
            local = repxctl("run", SELECTION[name], "--lab", lab, "--base-path", tmp_path / f"local-{name}", "--json")
            assert local.code == 0, local.stderr
            expected.update(local_out_files(tmp_path / f"local-{name}" / "outputs"))
        assert remote.out_files() == expected
        # Each job's SUCCESS reaches the remote with the agent's next poll cycle.
        succeeded = {(p.parts[-3], "SUCCESS") for p in tmp_path.glob("local-*/outputs/*/repx/SUCCESS")}
        wait_for(lambda: remote.markers() == succeeded, 10, "the markers on the remote")
    finally:
        daemon.stop()


def test_ctrl_c_stops_the_remote_processes(remote, tmp_path):
    lab = slow_lab(tmp_path / "lab", seconds=5)
    proc = remote.popen("slow", "--lab", lab)
    wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    time.sleep(6)  # longer than the jobs would have taken
    finished = remote.host.ssh(f"ls {remote.base}/outputs/*/out/", check=False).stdout
    assert "done.txt" not in finished and len(remote.executions()) == 2


def test_a_time_limit_stops_the_remote_job_saying_so(remote, tmp_path):
    writer = LabWriter(git_hash="7171e717" * 5)
    writer.run("slow").job("overtime", SLOW, params={"seconds": 60}, outputs={"done": "$out/done.txt"},
                           resources={"time": "00:00:02"})
    result = remote.run("slow", "--lab", writer.write(tmp_path / "lab"), timeout=60)
    assert result.code == 1
    assert "was stopped for exceeding its time limit" in result.stdout


def test_a_daemon_killed_mid_run_reattaches_to_the_remote_processes(remote, tmp_path):
    daemon = target_daemon(remote, tmp_path)
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        lab = slow_lab(tmp_path / "lab", seconds=4)
        run_id = repxctl("run", "slow", "--lab", lab, "--target", "remote", "--detach", env=env).stdout.strip()
        wait_for(lambda: len(remote.executions()) == 2, 60, "the first jobs to start")
        daemon.kill("all")
        daemon.start("all")
        wait_for(lambda: run_state(env, run_id) not in ("active", "cancelling"), 120, "the run to end")
        assert run_state(env, run_id) == "succeeded", daemon.logs()
        executions = remote.executions()
        assert sorted(executions) == sorted(set(executions)) and len(executions) == 3, daemon.logs()
    finally:
        daemon.stop()


@dataclass
class Recording:
    """Forwards to the real connection, noting each remote command and its input."""

    inner: object
    commands: list[tuple[list[str], str | None]]

    @property
    def calls(self):
        return self.inner.calls

    async def run(self, argv, stdin=None, timeout=120.0, identity=None):
        self.commands.append((list(argv), stdin))
        return await self.inner.run(argv, stdin=stdin, timeout=timeout, identity=identity)


def test_status_is_one_remote_command_per_poll_for_all_running_processes(remote, tmp_path, monkeypatch):
    for key in ("HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, remote.env[key])

    name, target = resolve_target(load_config(remote.config), "remote")
    base = base_path_for(target, None)
    lab = open_lab(build("sweep-scatter", tmp_path / "lab"), base)
    run = EmbeddedRun(plan_run(lab, base, ["sweep"], name, target), ExecutionOptions(concurrency=16))
    run.prepare()
    commands: list[tuple[list[str], str | None]] = []
    opened = run.remote.open

    async def recorded_open():
        launcher = await opened()
        launcher.commands = Recording(launcher.commands, commands)
        return launcher

    run.remote.open = recorded_open
    started = time.monotonic()
    summary = asyncio.run(run.run())
    seconds = time.monotonic() - started
    assert summary.ok
    processes = list((base / "outputs").rglob("stdout.log"))
    starts = [argv for argv, _stdin in commands if argv[2] == "start"]
    polls = [stdin.splitlines() for argv, stdin in commands if argv[2] == "status"]
    assert len(starts) == len(processes) > len(lab.jobs)  # one start per process, branch steps included
    assert len(polls) <= seconds / target.local.poll_interval + 1
    assert max(len(followed) for followed in polls) >= 4  # a stage's branches followed by one command


def test_an_unreachable_host_at_the_start_is_one_line_and_nothing_runs(remote, tmp_path):
    lab = build("simple", tmp_path / "lab")
    remote.host.cut_link()
    try:
        result = remote.run("@all", "--lab", lab)
    finally:
        remote.host.restore_link()
    assert result.code == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("repxctl: error:")]
    assert "target 'remote'" in line and "cannot reach" in line and "try again when the host is back" in line
    assert not (remote.mirror / "outputs" / "completions.jsonl").exists()
