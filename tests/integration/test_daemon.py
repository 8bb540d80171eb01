"""The service end to end: roles as real processes, repxctl talking to them."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from cli import repxctl
from definitions import simple, sweep_scatter
from service import Daemon

from repxd.api.client import Api
from repxd.lab.writer import LabWriter


@pytest.fixture
def daemon():
    d = Daemon.create(tcp=True, extra="")
    yield d
    d.stop()


def api_env(d: Daemon) -> dict:
    env = dict(d.env)
    env["REPX_API"] = str(d.socket)
    return env


def check_examples_succeed(d: Daemon, tmp_path) -> None:
    env = api_env(d)
    for name, builder, selection, expected in (("simple", simple, "@all", 4), ("sweep", sweep_scatter, "sweep", 7)):
        lab = builder().write(tmp_path / name)
        result = repxctl("run", selection, "--lab", lab, "--json", env=env)
        assert result.code == 0, result.stderr + d.logs()
        run = result.json()
        assert run["state"] == "succeeded" and run["counts"] == {"succeeded": expected}
        assert "Submitted run" in result.stderr
    (total,) = (d.base / "outputs").glob("*-total-1.0/out/total.txt")
    assert total.read_text().strip() == "90"
    again = repxctl("run", "@all", "--lab", tmp_path / "simple", "--json", env=env).json()
    assert again["counts"] == {"succeeded": 4}
    attempts = json.loads(repxctl("jobs", "--json", env=env).stdout)
    assert {j["state"] for j in attempts} == {"succeeded"}


def test_all_in_one_process(daemon, tmp_path):
    daemon.start("all")
    check_examples_succeed(daemon, tmp_path)
    status = json.loads(repxctl("status", "--json", env=api_env(daemon)).stdout)
    assert {r["name"] for r in status["roles"]} == {"api", "scheduler"}
    assert status["agents"]["active"] == 1


def test_the_agent_places_the_labs_artifacts_as_upstream_does(daemon, tmp_path):
    """Under the base path's artifacts/, as upstream's runner syncs them: the Lab's files outside
    jobs/ before the first job starts, every job's directory while the jobs run."""
    daemon.start("all")
    lab = simple().write(tmp_path / "simple")
    result = repxctl("run", "@all", "--lab", lab, "--json", env=api_env(daemon))
    assert result.code == 0 and result.json()["state"] == "succeeded", result.stderr + daemon.logs()
    artifacts = daemon.base / "artifacts"
    assert {p.name for p in (artifacts / "revision").iterdir()} == {p.name for p in (lab / "revision").iterdir()}
    wanted = sorted(str(p.relative_to(lab)) for p in (lab / "jobs").rglob("*") if p.is_file())
    deadline = time.monotonic() + 30
    while (placed := sorted(str(p.relative_to(artifacts)) for p in (artifacts / "jobs").rglob("*") if p.is_file())) != wanted:
        assert time.monotonic() < deadline, f"placed {placed}, wanted {wanted}"
        time.sleep(0.1)
    for rel in wanted:
        assert (artifacts / rel).read_bytes() == (lab / rel).read_bytes()


def test_three_roles_as_separate_processes(daemon, tmp_path):
    for role in ("api", "scheduler", "agent"):
        daemon.start(role)
    check_examples_succeed(daemon, tmp_path)
    agents = json.loads(repxctl("agents", "--json", env=api_env(daemon)).stdout)
    assert [a["id"] for a in agents] == ["agent-1"] and agents[0]["state"] == "active"
    # Where each attempt ran reaches the store with the agent's next heartbeat.
    api = Api(str(daemon.socket))
    deadline = time.monotonic() + 15
    while any(not (a["handle"] or "").startswith("pid:") for a in api.call("GET", "/v1/attempts")):
        assert time.monotonic() < deadline, api.call("GET", "/v1/attempts")
        time.sleep(0.2)


def test_separate_roles_wake_each_other_instead_of_waiting_for_their_polls(tmp_path):
    """A chain of four jobs through api, scheduler and agent as separate processes, with the
    scheduler polling once a minute: each report must wake the scheduler (and each placement the
    agent's claim), or the run would take minutes."""
    d = Daemon.create(extra="")
    d.config.write_text(d.config.read_text().replace("poll_interval = 0.05", "poll_interval = 60"))
    try:
        for role in ("api", "scheduler", "agent"):
            d.start(role)
        lab = simple().write(tmp_path / "simple")
        result = repxctl("run", "@all", "--lab", lab, "--json", env=api_env(d), timeout=60)
        assert result.code == 0, result.stderr + d.logs()
        assert result.json()["counts"] == {"succeeded": 4}
    finally:
        d.stop()


def test_two_runs_of_the_same_jobs_run_each_job_once(tmp_path):
    """Two runs of one Lab at once, with more jobs than slots: the second run's jobs wait in the
    queue, then each either shares the first run's live attempt or is settled from the first
    run's SUCCESS marker. No job executes twice and both runs succeed."""
    d = Daemon.create(extra="", agent_extra="slots = 2\n")
    executions = tmp_path / "executions.log"
    writer = LabWriter()
    run = writer.run("wide")
    for i in range(8):
        run.job(f"w{i}", f"#!/bin/sh\necho w{i} >> {executions}\nsleep 0.3\necho ok > \"$1/o\"\n", outputs={"o": "$out/o"})
    lab = writer.write(tmp_path / "lab")
    try:
        d.start("all")
        env = api_env(d)
        first, second = (repxctl("run", "wide", "--lab", lab, "--detach", env=env).stdout.strip() for _ in range(2))
        api = Api(str(d.socket))
        deadline = time.monotonic() + 120
        for run_id in (first, second):
            while not (state := api.call("GET", f"/v1/runs/{run_id}"))["done"]:
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
            assert state["state"] == "succeeded" and state["counts"] == {"succeeded": 8}, state
        assert sorted(executions.read_text().split()) == sorted(f"w{i}" for i in range(8))
        attempts = api.call("GET", "/v1/attempts")
        assert {a["run_id"] for a in attempts} == {first}, "the second run started attempts of its own"
    finally:
        d.stop()


def test_cancel_and_retry(daemon, tmp_path):
    daemon.start("all")
    env = api_env(daemon)
    from repxd.lab.writer import LabWriter

    writer = LabWriter()
    slow = writer.run("slow").job("slow", "#!/bin/sh\nsleep 30\n", outputs={"x": "$out/x"})
    lab = writer.write(tmp_path / "lab")
    run_id = repxctl("run", "slow", "--lab", lab, "--detach", env=env).stdout.strip()
    deadline = time.monotonic() + 20
    while json.loads(repxctl("runs", run_id, "--json", env=env).stdout)["counts"] != {"running": 1}:
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.1)
    assert repxctl("cancel", run_id, env=env).code == 0
    while not json.loads(repxctl("runs", run_id, "--json", env=env).stdout)["done"]:
        assert time.monotonic() < deadline + 20, daemon.logs()
        time.sleep(0.1)
    run = json.loads(repxctl("runs", run_id, "--json", env=env).stdout)
    assert run["state"] == "cancelled" and run["counts"] == {"cancelled": 1}
    repx = daemon.base / "outputs" / slow.id / "repx"
    assert not (repx / "SUCCESS").exists() and not (repx / "FAIL").exists()
    retried = repxctl("retry", run_id, "--json", env=env)
    assert retried.code == 0 and json.loads(retried.stdout)["requeued"] == 1
    # Read before the retry as finished (the API keeps finished runs' answers), it reads active now.
    again = json.loads(repxctl("runs", run_id, "--json", env=env).stdout)
    assert again["state"] == "active" and not again["done"], again
    assert repxctl("cancel", run_id, env=env).code == 0  # leave no job behind
    while json.loads(repxctl("runs", run_id, "--json", env=env).stdout)["state"] != "cancelled":
        assert time.monotonic() < deadline + 40, daemon.logs()
        time.sleep(0.1)


def test_tcp_needs_a_token(daemon):
    daemon.start("all")
    url = f"http://127.0.0.1:{daemon.ports['api']}"
    denied = httpx.get(f"{url}/v1/runs")
    assert denied.status_code == 401 and "bearer token" in denied.json()["error"]
    assert httpx.get(f"{url}/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/v1/health").status_code == 200
    assert httpx.get(f"{url}/openapi.json").status_code == 401


def test_api_errors_are_one_line(daemon, tmp_path):
    daemon.start("api")
    env = api_env(daemon)
    missing = repxctl("runs", "nosuchrun", env=env)
    assert missing.code == 2 and missing.stderr.count("\n") == 1 and "nosuchrun" in missing.stderr
    lab = simple().write(tmp_path / "lab")
    bad = repxctl("run", "nosuchrun", "--lab", lab, env=env)
    assert bad.code == 2 and "not a run" in bad.stderr and bad.stderr.count("\n") == 1
    unreachable = repxctl("status", "--api", str(tmp_path / "none.sock"))
    assert unreachable.code == 1 and f"no repx daemon at {tmp_path / 'none.sock'} (no such socket)" in unreachable.stderr
