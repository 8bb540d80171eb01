"""Job and attempt listings page like run listings (issue 11: list routes paginate), and the
API's TCP /metrics needs a token where the daemon has tokens."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from cli import repxctl
from service import Daemon

from repxd.lab.writer import LabWriter


def unix_api(daemon: Daemon) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=30)


def five_jobs(dest: Path) -> Path:
    lab = LabWriter()
    run = lab.run("five")
    for n in range(5):
        run.job(f"j{n}", f"#!/bin/sh\necho {n}\n")
    return lab.write(dest)


def pages(api: httpx.Client, path: str, params: dict) -> list[list[dict]]:
    found, cursor = [], None
    while True:
        reply = api.get(path, params=params | ({"after": cursor} if cursor else {}))
        assert reply.status_code == 200, reply.text
        found.append(reply.json())
        if "X-Next-Cursor" not in reply.headers:
            return found
        cursor = reply.headers["X-Next-Cursor"]


def test_jobs_and_attempts_page_with_a_cursor(tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        lab = five_jobs(tmp_path / "lab")
        with unix_api(daemon) as api:
            runs = [api.post("/v1/runs", json={"lab": str(lab), "selection": ["five"]}).json()["id"] for _ in range(2)]
            deadline = time.monotonic() + 60
            while len(api.get("/v1/jobs", params={"state": "succeeded"}).json()) < 10:
                assert time.monotonic() < deadline, api.get("/v1/jobs").json()
                time.sleep(0.1)
            whole_jobs = api.get("/v1/jobs").json()
            assert len(whole_jobs) == 10 and {j["run_id"] for j in whole_jobs} == set(runs)
            job_pages = pages(api, "/v1/jobs", {"limit": 3})
            assert [len(p) for p in job_pages] == [3, 3, 3, 1]
            assert sum(job_pages, []) == whole_jobs
            run_pages = pages(api, f"/v1/runs/{runs[0]}/jobs", {"limit": 5})  # a full last page: one empty page follows
            assert [len(p) for p in run_pages] == [5, 0]
            whole_attempts = api.get("/v1/attempts").json()
            assert len(whole_attempts) == 5  # the second run's jobs were done already
            attempt_pages = pages(api, "/v1/attempts", {"limit": 2})
            assert [len(p) for p in attempt_pages] == [2, 2, 1] and sum(attempt_pages, []) == whole_attempts
            for path, query in [("/v1/jobs", {"after": "nosuchrun/nosuchjob"}), ("/v1/jobs", {"after": "no-slash"}),
                                ("/v1/jobs", {"limit": "0"}), ("/v1/jobs", {"limit": "10001"}),
                                ("/v1/attempts", {"after": "x"}), ("/v1/attempts", {"limit": "abc"})]:
                reply = api.get(path, params=query)
                assert reply.status_code == 400 and next(iter(query)) in reply.json()["error"], (path, query, reply.text)
        result = repxctl("jobs", "--json", env=dict(daemon.env, REPX_API=str(daemon.socket)))
        assert result.code == 0 and len(result.json()) == 10
    finally:
        daemon.stop()


def test_tcp_metrics_needs_a_token_where_the_daemon_has_tokens(tmp_path):
    tokens = {"admin": "s3cret-admin", "metrics": "prometheus-only"}
    for kind, value in tokens.items():
        (tmp_path / kind).write_text(value + "\n")
    daemon = Daemon.create(tcp=True, api_extra=f'admin_token_file = "{tmp_path / "admin"}"\n'
                                                f'metrics_token_file = "{tmp_path / "metrics"}"\n')
    try:
        daemon.start("all")
        url = f"http://127.0.0.1:{daemon.ports['api']}"
        refused = httpx.get(f"{url}/metrics")
        assert refused.status_code == 401 and "api.metrics_token_file" in refused.json()["error"]
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for value in tokens.values():
            scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {value}"})
            assert scraped.status_code == 200 and "repx_api_requests" in scraped.text
        # The metrics token reads /metrics and nothing else.
        assert httpx.get(f"{url}/v1/runs", headers={"Authorization": "Bearer prometheus-only"}).status_code == 401
        with unix_api(daemon) as api:  # local users keep reading it on the socket
            assert api.get("/metrics").status_code == 200
    finally:
        daemon.stop()
