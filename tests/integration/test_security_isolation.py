"""A job has its submitter's powers, never the daemon's (issue 11, finding 1), on the subprocess
launcher of a root daemon: real users (test_auth's), real jobs, what the job itself observes."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from cli import repxctl
from conftest import missing
from service import Daemon
from test_auth import ALICE, ALLOWED, users  # noqa: F401 - the module-scoped users fixture

from repxd.lab.writer import LabWriter

# What the job sees of itself and of what only root may read or reach.
PROBE = """#!/bin/sh
id -u > "$1/uid"
if cat /etc/shadow > /dev/null 2>&1; then echo readable > "$1/shadow"; else echo denied > "$1/shadow"; fi
"""


@pytest.fixture
def shared_dir():
    """A directory every user can read (pytest's tmp_path is 0700)."""
    where = Path(tempfile.mkdtemp(prefix="repx-isolation-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def probe_lab(where: Path) -> Path:
    lab = LabWriter()
    lab.run("probe").job("probe", PROBE, outputs={"uid": "$out/uid"})
    return lab.write(where / "lab")


def job_out(d: Daemon) -> Path:
    (out,) = (d.base / "outputs").glob("*-probe-1.0/out")
    return out


def wait_finished(d: Daemon, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    env = dict(d.env, REPX_API=str(d.socket))
    while True:
        run = repxctl("runs", run_id, "--json", env=env).json()
        if run["state"] in ("succeeded", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.2)


def test_socket_submission_runs_as_the_submitter(users, shared_dir):  # noqa: F811 - users needs root
    alice = users[ALICE]
    d = Daemon.create(api_extra=ALLOWED)
    try:
        d.start("all")
        result = alice.repxctl("run", "probe", "--lab", probe_lab(shared_dir), "--detach", api=d.socket)
        assert result.code == 0, result.stderr + d.logs()
        assert wait_finished(d, result.stdout.strip())["state"] == "succeeded", d.logs()
        out = job_out(d)
        assert int((out / "uid").read_text()) == alice.uid != 0
        assert (out / "shadow").read_text().strip() == "denied"
        assert out.stat().st_uid == alice.uid
    finally:
        d.stop()


def test_token_submission_runs_as_nobody(shared_dir, tmp_path):
    if os.geteuid() != 0:
        missing("a root daemon is needed to run jobs as nobody")
    token = f"admin-{os.urandom(8).hex()}"
    (tmp_path / "admin").write_text(token + "\n")
    d = Daemon.create(tcp=True, api_extra=f'admin_token_file = "{tmp_path / "admin"}"\n')
    try:
        d.start("all")
        url = f"http://127.0.0.1:{d.ports['api']}"
        env = dict(d.env, REPX_API=url, REPX_TOKEN=token)
        result = repxctl("run", "probe", "--lab", probe_lab(shared_dir), "--detach", env=env)
        assert result.code == 0, result.stderr + d.logs()
        assert wait_finished(d, result.stdout.strip())["state"] == "succeeded", d.logs()
        assert int((job_out(d) / "uid").read_text()) == pwd.getpwnam("nobody").pw_uid
        assert (job_out(d) / "shadow").read_text().strip() == "denied"
    finally:
        d.stop()


def test_time_limit_ends_a_subprocess_job(tmp_path):
    """`time` in the resources is enforced by the subprocess launcher too (not only by units)."""
    lab = LabWriter()
    lab.run("slow").job("slow", "#!/bin/sh\nsleep 60\n", outputs={}, resources={"time": "00:00:02"})
    started = time.monotonic()
    result = repxctl("run", "slow", "--lab", lab.write(tmp_path / "lab"), "--base-path", tmp_path / "base", timeout=50)
    assert result.code == 1, result.stderr
    assert time.monotonic() - started < 30
    assert "exceeding its time limit" in result.stderr + result.stdout


def test_service_user_daemon_refuses_to_run_others_jobs_as_itself(tmp_path):
    """An agent that cannot switch users does not quietly run a token caller's job with its own
    powers: the job fails with the reason and what an administrator may change."""
    from repxd.agent.identity import JobRefused, job_uid

    with pytest.raises(JobRefused, match="allow_jobs_as_daemon_user"):
        job_uid(-1, run_as_submitter=True, job_user=None, allow_daemon_user=False, can_switch=False, daemon_uid=990)
    with pytest.raises(JobRefused, match="cannot start jobs as uid 1000"):
        job_uid(1000, run_as_submitter=True, job_user=None, allow_daemon_user=False, can_switch=False, daemon_uid=990)
    # The personal daemon's own user submitting: the same powers, so allowed.
    assert job_uid(990, run_as_submitter=True, job_user=None, allow_daemon_user=False, can_switch=False, daemon_uid=990) is None
    # The administrator's explicit choice.
    assert job_uid(None, run_as_submitter=True, job_user=None, allow_daemon_user=True, can_switch=False, daemon_uid=990) is None
    assert job_uid(1000, run_as_submitter=True, job_user=None, allow_daemon_user=False, can_switch=True, daemon_uid=0) == 1000
