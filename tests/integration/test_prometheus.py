"""The roles' /metrics as Prometheus sees them: a real Prometheus scrapes all three roles, and
promtool lints each role's exposition."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from cli import repxctl
from conftest import require_program
from definitions import simple
from service import Daemon, free_port

ROLES = ("api", "scheduler", "agent")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The three roles as separate processes (the API also on TCP), after running the simple Lab."""
    d = Daemon.create(tcp=True)
    try:
        for role in ROLES:
            d.start(role)
        env = dict(d.env)
        env["REPX_API"] = str(d.socket)
        lab = simple().write(tmp_path_factory.mktemp("lab") / "simple")
        result = repxctl("run", "@all", "--lab", lab, "--json", env=env, timeout=60)
        assert result.code == 0, result.stderr + d.logs()
        assert result.json()["counts"] == {"succeeded": 4}
        yield d
    finally:
        d.stop()


def metrics_url(d: Daemon, role: str) -> str:
    return f"http://127.0.0.1:{d.ports[role]}/metrics"


@pytest.fixture
def prometheus(daemon, tmp_path):
    """A Prometheus on a loopback port scraping the three roles every second; yields its base URL."""
    exe = require_program("prometheus")
    config = tmp_path / "prometheus.yml"
    jobs = "".join(f"  - job_name: repx-{role}\n    static_configs:\n      - targets: ['127.0.0.1:{daemon.ports[role]}']\n"
                   for role in ROLES)
    config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
    promtool = require_program("promtool")
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"prometheus did not become ready:\n{log.read_text(errors='replace')}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def query(url: str, promql: str) -> dict[str, float]:
    """An instant query's result as {job: value}."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    return {sample["metric"].get("job", ""): float(sample["value"][1]) for sample in body["data"]["result"]}


def wait_for(url: str, promql: str, check, timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if check(result):
            return result
        if time.monotonic() > deadline:
            targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            pytest.fail(f"{promql} never satisfied the check; last result {result}, targets {health}")
        time.sleep(0.25)


def test_prometheus_scrapes_all_three_roles(daemon, prometheus):
    flags = httpx.get(f"{prometheus}/api/v1/status/flags", timeout=5).json()["data"]
    assert flags["web.listen-address"].startswith("127.0.0.1:")  # never on a public interface
    jobs = {f"repx-{role}" for role in ROLES}
    up = wait_for(prometheus, "up", lambda r: set(r) == jobs and all(v == 1 for v in r.values()))
    assert up == dict.fromkeys(jobs, 1.0)
    # The run is over before Prometheus starts, so the first scrape of each role already has it.
    wait_for(prometheus, 'repx_jobs{job="repx-scheduler",state="succeeded"}', lambda r: r.get("repx-scheduler", 0) >= 4)
    wait_for(prometheus, 'sum by (job) (repx_attempts_placed_total{job="repx-scheduler"})',
             lambda r: r.get("repx-scheduler", 0) >= 4)
    wait_for(prometheus, 'sum by (job) (repx_api_requests_total{job="repx-api",route="/v1/runs",method="POST"})',
             lambda r: r.get("repx-api", 0) >= 1)
    wait_for(prometheus, 'sum by (job) (repx_api_requests_total{job="repx-api"})', lambda r: r.get("repx-api", 0) > 0)
    wait_for(prometheus, 'sum by (job) (repx_job_duration_seconds_count{job="repx-agent",outcome="succeeded"})',
             lambda r: r.get("repx-agent", 0) >= 4)


@pytest.mark.parametrize("role", ROLES)
def test_promtool_accepts_each_roles_metrics(daemon, role):
    promtool = require_program("promtool")
    response = httpx.get(metrics_url(daemon, role), timeout=5)  # no token: /metrics is open, also on the API's TCP
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "repx_" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    problems = checked.stdout + checked.stderr
    assert checked.returncode == 0 and not problems, f"promtool check metrics ({checked.returncode}):\n{problems}\n{text}"

