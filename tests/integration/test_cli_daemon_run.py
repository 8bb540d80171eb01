"""`repxctl run` through a real daemon (`repxd all`): options honoured or refused, never dropped;
failures named like embedded; TRIES after retry; Ctrl-C cancels; --detach (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import repxctl
from service import Daemon

from repxd.lab.writer import LabWriter


def env_for(d: Daemon) -> dict:
    return d.env | {"REPX_API": str(d.socket)}


def failing_lab(dest: Path) -> tuple[Path, str]:
    """ok -> bad (exits 3) -> after (blocked); the id of `bad`."""
    writer = LabWriter()
    run = writer.run("chain")
    ok = run.job("ok", "#!/bin/sh\necho fine > \"$1/x\"\n", outputs={"x": "$out/x"})
    bad = run.job("bad", "#!/bin/sh\necho broken >&2\nexit 3\n", inputs={"x": ok.output("x")}, outputs={"y": "$out/y"})
    run.job("after", "#!/bin/sh\ntouch \"$1/z\"\n", inputs={"y": bad.output("y")}, outputs={"z": "$out/z"})
    return writer.write(dest), bad.id


def slow_lab(dest: Path) -> Path:
    writer = LabWriter()
    writer.run("slow").job("slow", "#!/bin/sh\nsleep 60\n", outputs={"x": "$out/x"})
    return writer.write(dest)


@pytest.mark.parametrize("option", [["-j", "1"], ["--mem", "1G"], ["--resources", "RES"], ["--base-path", "BASE"]])
def test_embedded_only_options_are_refused_with_a_daemon(daemon, tmp_path, option):
    lab, _ = failing_lab(tmp_path / "lab")
    (tmp_path / "res.toml").write_text("")
    option = [{"RES": str(tmp_path / "res.toml"), "BASE": str(tmp_path / "base")}.get(o, o) for o in option]
    result = repxctl("run", "chain", "--lab", lab, *option, env=env_for(daemon))
    assert result.code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and option[0].lstrip("-") in result.stderr and "--embedded" in result.stderr
    assert repxctl("runs", "--json", env=env_for(daemon)).json() == []  # nothing was submitted
    assert not (tmp_path / "base").exists()


def test_embedded_flag_honours_base_path_and_jobs(daemon, tmp_path):
    lab, _ = failing_lab(tmp_path / "lab")
    result = repxctl("run", "chain", "--lab", lab, "--embedded", "--base-path", tmp_path / "base", "-j", "1",
                     env=env_for(daemon))
    assert result.code == 1 and "1 at once" in result.stderr
    assert (tmp_path / "base" / "outputs").is_dir()


def test_failed_daemon_run_names_the_job_reason_and_log(daemon, tmp_path):
    lab, bad = failing_lab(tmp_path / "lab")
    result = repxctl("run", "chain", "--lab", lab, env=env_for(daemon))
    assert result.code == 1, result.stderr + daemon.logs()
    log = daemon.base / "outputs" / bad / "repx" / "stderr.log"
    fail_lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if "FAIL" in line]
    assert len(fail_lines) == 1 and bad in fail_lines[0] and "status 3" in fail_lines[0] and f"(log: {log})" in fail_lines[0]
    assert "1 succeeded, 1 failed, 1 blocked by failures." in result.stderr


def test_tries_counts_the_attempt_after_retry(daemon, tmp_path):
    lab, bad = failing_lab(tmp_path / "lab")
    env = env_for(daemon)
    run_id = repxctl("run", "chain", "--lab", lab, "--detach", env=env).stdout.strip()
    wait_done(run_id, env)
    assert repxctl("retry", run_id, env=env).code == 0
    wait_done(run_id, env)
    jobs = {j["job_id"]: j for j in repxctl("jobs", "--run", run_id, "--json", env=env).json()}
    assert jobs[bad]["attempts"] == 2 and jobs[bad]["state"] == "failed"
    table = repxctl("jobs", "--run", run_id, env=env).stdout
    (row,) = [line.split() for line in table.splitlines() if line.split()[1:2] == [bad]]
    assert row[2:4] == ["failed", "2"], table


def wait_done(run_id: str, env: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not (run := repxctl("runs", run_id, "--json", env=env).json())["done"]:
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    return run


def test_detach_prints_the_run_id_and_json(daemon, tmp_path):
    lab, _ = failing_lab(tmp_path / "lab")
    env = env_for(daemon)
    plain = repxctl("run", "chain", "--lab", lab, "--detach", env=env)
    assert plain.code == 0 and len(plain.stdout.split()) == 1
    assert repxctl("runs", plain.stdout.strip(), "--json", env=env).json()["id"] == plain.stdout.strip()
    as_json = repxctl("run", "chain", "--lab", lab, "--detach", "--json", env=env)
    assert as_json.code == 0 and as_json.json()["selection"] == ["chain"]


def test_detach_without_a_daemon_is_refused(tmp_path):
    lab, _ = failing_lab(tmp_path / "lab")
    result = repxctl("run", "chain", "--lab", lab, "--embedded", "--detach", "--base-path", tmp_path / "base")
    assert result.code == 2 and "--detach needs the repx daemon" in result.stderr
    assert not (tmp_path / "base").exists()


def interrupt_run(args: list, env: dict, running: callable) -> subprocess.CompletedProcess:
    """Start `repxctl run`, wait until `running()` holds, send SIGINT as a terminal's Ctrl-C does."""
    proc = subprocess.Popen([shutil.which("repxctl"), "run", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not running():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_cancels_the_daemon_run(daemon, tmp_path):
    lab = slow_lab(tmp_path / "lab")
    env = env_for(daemon)

    def running() -> bool:
        return any(j["state"] == "running" for j in repxctl("jobs", "--json", env=env).json())

    done = interrupt_run(["slow", "--lab", lab], env, running)
    assert done.returncode == 130, done.stderr
    assert "Cancelled (SIGINT)" in done.stderr and "Traceback" not in done.stderr
    (run,) = repxctl("runs", "--json", env=env).json()
    assert wait_done(run["id"], env)["state"] == "cancelled"


def test_ctrl_c_cancels_the_embedded_run(tmp_path):
    lab = slow_lab(tmp_path / "lab")
    env = dict(os.environ) | {"REPX_API": ""}
    base = tmp_path / "base"
    done = interrupt_run(["slow", "--lab", lab, "--embedded", "--base-path", base], env,
                         lambda: any(base.glob("outputs/*/repx/stderr.log")))
    assert done.returncode == 130, done.stderr
    assert "Cancelled (SIGINT)" in done.stderr and "Traceback" not in done.stderr
    assert not any(base.glob("outputs/*/repx/SUCCESS")) and not any(base.glob("outputs/*/repx/FAIL"))


def test_daemon_run_json_has_the_embedded_keys(daemon, tmp_path):
    lab, bad = failing_lab(tmp_path / "lab")
    daemon_json = repxctl("run", "chain", "--lab", lab, "--json", env=env_for(daemon))
    embedded_json = repxctl("run", "chain", "--lab", lab, "--json", "--embedded", "--base-path", tmp_path / "b")
    assert daemon_json.code == embedded_json.code == 1
    d, e = daemon_json.json(), embedded_json.json()
    for key in ("failed", "blocked", "not_started", "cancelled", "ok", "executed"):
        assert d[key] == e[key], key
    assert list(d["failed"]) == [bad] and json.dumps(d["failed"])
