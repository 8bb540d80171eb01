"""Files a job produces and requests anyone sends are read within bounds (issue 11, findings 2
and 5 and the smaller ones): a FIFO or a flood of work items fails that job and leaves the
daemon answering; logs are read in pieces; bad query values are the caller's 400."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from cli import repxctl
from service import Daemon

from repxd.errors import LabError
from repxd.lab.loader import load_lab
from repxd.lab.writer import WORK_ITEM, LabWriter, Step

FIFO_SCATTER = '#!/bin/sh\nmkfifo "$1/work_items.json"\n'
FLOOD_SCATTER = ('#!/usr/bin/env python3\nimport json, sys\n'
                 'json.dump([{"i": i} for i in range(50000)], open(sys.argv[1] + "/work_items.json", "w"))\n')
STEP = '#!/bin/sh\necho x > "$1/r"\n'
GATHER = '#!/bin/sh\necho done > "$1/g"\n'


def scatter_lab(dest: Path, scatter: str) -> Path:
    lab = LabWriter()
    lab.run("hostile").scatter_gather("sg", scatter=scatter, gather=GATHER, outputs={"g": "$out/g"},
                                      steps={"one": Step(STEP, inputs={"worker__item": WORK_ITEM}, outputs={"r": "$out/r"})})
    return lab.write(dest)


@pytest.mark.parametrize(("scatter", "reason"), [(FIFO_SCATTER, "not a regular file"),
                                                 (FLOOD_SCATTER, "more than the 10000")])
def test_hostile_work_items_fail_the_job_embedded(tmp_path, scatter, reason):
    lab = scatter_lab(tmp_path / "lab", scatter)
    result = repxctl("run", "hostile", "--lab", lab, "--base-path", tmp_path / "base", timeout=60)
    assert result.code == 1, result.stderr
    (stderr_log,) = (tmp_path / "base" / "outputs").glob("*-sg-1.0/repx/stderr.log")
    assert reason in stderr_log.read_text()


def test_fifo_work_items_leave_the_daemon_answering(tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        lab = scatter_lab(tmp_path / "lab", FIFO_SCATTER)
        result = repxctl("run", "hostile", "--lab", lab, "--json", env=env, timeout=60)
        assert result.code == 1, result.stderr + daemon.logs()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx") as api:
            started = time.monotonic()
            assert api.get("/v1/health").status_code == 200
            assert time.monotonic() - started < 1.0
            jobs = api.get("/v1/jobs").json()
        assert [j["state"] for j in jobs] == ["failed"]
    finally:
        daemon.stop()


def test_output_template_leaving_out_is_refused(tmp_path):
    lab = LabWriter()
    lab.run("r").job("steal", "#!/bin/sh\n", outputs={"secret": "$out/../../../../etc/shadow"})
    with pytest.raises(LabError, match="leaves \\$out"):
        load_lab(lab.write(tmp_path / "lab"))


@pytest.fixture(scope="module")
def daemon_with_a_big_log(tmp_path_factory):
    """A finished job whose stdout.log is 1 GiB (sparse, then a few real lines at its end)."""
    daemon = Daemon.create()
    daemon.start("all")
    env = dict(daemon.env, REPX_API=str(daemon.socket))
    lab = LabWriter()
    lab.run("r").job("talk", "#!/bin/sh\necho hello\n", outputs={})
    lab_dir = lab.write(tmp_path_factory.mktemp("big") / "lab")
    assert repxctl("run", "r", "--lab", lab_dir, env=env).code == 0
    (log,) = (daemon.base / "outputs").glob("*-talk-1.0/repx/stdout.log")
    with open(log, "r+b") as fh:
        fh.truncate(1 << 30)
        fh.seek(0, os.SEEK_END)
        fh.write(b"line-1\nline-2\nline-3\n")
    yield daemon, log.parent.parent.name
    daemon.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_log_tail_reads_only_the_end(daemon_with_a_big_log):
    daemon, job = daemon_with_a_big_log
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=30) as api:
        reply = api.get(f"/v1/jobs/{job}/log", params={"tail": 2})
        assert reply.status_code == 200 and reply.text == "line-2\nline-3\n"
        assert api.get(f"/v1/jobs/{job}/log", params={"tail": "abc"}).status_code == 400


def test_whole_big_log_streams_without_growing_the_daemon(daemon_with_a_big_log):
    daemon, job = daemon_with_a_big_log
    pid = daemon.processes["all"].pid
    before = rss_kib(pid)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=60) as api, \
            api.stream("GET", f"/v1/jobs/{job}/log") as response:
        received = 0
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 200 << 20:  # a fifth of the log is enough to see the daemon's growth
                break
        peak = rss_kib(pid)
        health = api.get("/v1/health")
    assert health.status_code == 200
    assert peak - before < 100 * 1024, f"RSS grew by {(peak - before) // 1024} MiB while streaming"


@pytest.mark.parametrize("query", ["limit=abc", "limit=-1", "limit=99999999999999999999"])
def test_malformed_query_values_are_400(query):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx") as api:
            reply = api.get(f"/v1/runs?{query}")
            assert reply.status_code == 400
            assert "limit" in json.loads(reply.text)["error"]
    finally:
        daemon.stop()


def test_log_of_unknown_job_is_one_line(tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        result = repxctl("log", "0000nosuchjob", env=env)
        assert result.code != 0
        assert len(result.stderr.strip().splitlines()) == 1 and "0000nosuchjob" in result.stderr
    finally:
        daemon.stop()
