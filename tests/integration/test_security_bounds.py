"""Files a job produces and requests anyone sends are read within bounds (issue 11, findings 2
and 5 and the smaller ones): a FIFO or a flood of work items fails that job and leaves the
daemon answering; logs are read in pieces; bad query values are the caller's 400."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cli import repxctl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service import Daemon, free_port

from repxd.errors import LabError
from repxd.exec.launcher import adoptable_status, exit_file
from repxd.lab.loader import load_lab
from repxd.lab.writer import WORK_ITEM, LabWriter, Step

FIFO_SCATTER = '#!/bin/sh\nmkfifo "$1/work_items.json"\n'
FLOOD_SCATTER = ('#!/usr/bin/env python3\nimport json, sys\n'
                 'json.dump([{"i": i} for i in range(50000)], open(sys.argv[1] + "/work_items.json", "w"))\n')
STEP = '#!/bin/sh\necho x > "$1/r"\n'
GATHER = '#!/bin/sh\necho done > "$1/g"\n'


def scatter_lab(dest: Path, scatter: str, job: str = "sg") -> Path:
    lab = LabWriter()
    lab.run("hostile").scatter_gather(job, scatter=scatter, gather=GATHER, outputs={"g": "$out/g"},
                                      steps={"one": Step(STEP, inputs={"worker__item": WORK_ITEM}, outputs={"r": "$out/r"})})
    return lab.write(dest)


NESTED_SCATTER = ('#!/usr/bin/env python3\nimport sys\n'
                  'open(sys.argv[1] + "/work_items.json", "w").write("[" * 1000000)\n')


@pytest.mark.parametrize(("scatter", "reason"), [(FIFO_SCATTER, "not a regular file"),
                                                 (FLOOD_SCATTER, "more than the 10000"),
                                                 (NESTED_SCATTER, "nested too deeply")])
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



def items_scatter(count: int) -> str:
    return ('#!/usr/bin/env python3\nimport json, sys\n'
            f'json.dump([{{"i": i}} for i in range({count})], open(sys.argv[1] + "/work_items.json", "w"))\n')


def test_work_item_bound_is_the_agents_setting(tmp_path):
    daemon = Daemon.create(agent_extra="max_work_items = 3\n")
    try:
        daemon.start("all")
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        within = repxctl("run", "hostile", "--lab", scatter_lab(tmp_path / "three", items_scatter(3)), env=env, timeout=60)
        assert within.code == 0, within.stderr + daemon.logs()
        beyond = repxctl("run", "hostile", "--lab", scatter_lab(tmp_path / "four", items_scatter(4), "sg4"), env=env, timeout=60)
        assert beyond.code == 1, beyond.stderr + daemon.logs()
        with unix_api(daemon) as api:
            failed = [j for j in api.get("/v1/jobs").json() if j["state"] == "failed"]
        assert len(failed) == 1 and "more than the 3 work items" in failed[0]["reason"], failed
    finally:
        daemon.stop()

@pytest.mark.parametrize("template", ["$out/../../../../etc/shadow", "/etc/shadow", "$outer/x", "$out/a/../../b"])
def test_output_template_leaving_out_is_refused(tmp_path, template):
    lab = LabWriter()
    lab.run("r").job("steal", "#!/bin/sh\n", outputs={"secret": template})
    with pytest.raises(LabError, match="leaves \\$out"):
        load_lab(lab.write(tmp_path / "lab"))
    refused = repxctl("run", "r", "--lab", tmp_path / "lab", "--base-path", tmp_path / "base")
    assert refused.code == 2 and len(refused.stderr.strip().splitlines()) == 1 and "leaves $out" in refused.stderr
    assert not (tmp_path / "base" / "outputs").exists()


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


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def rss_kib(pid: int) -> int:
    return proc_kib(pid, "VmRSS")


def test_log_tail_reads_only_the_end(daemon_with_a_big_log):
    daemon, job = daemon_with_a_big_log
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=30) as api:
        reply = api.get(f"/v1/jobs/{job}/log", params={"tail": 2})
        assert reply.status_code == 200 and reply.text == "line-2\nline-3\n"
        assert api.get(f"/v1/jobs/{job}/log", params={"tail": "abc"}).status_code == 400
        for bad in ({"stream": "journal"}, {"follow": "maybe"}):
            refused = api.get(f"/v1/jobs/{job}/log", params=bad)
            assert refused.status_code == 400 and next(iter(bad)) in refused.json()["error"], refused.text


def test_log_tail_of_a_log_without_lines_stops_at_its_end(daemon_with_a_big_log):
    """Asking for more lines than the 1 GiB log has once scanned, and sent, all of it."""
    daemon, job = daemon_with_a_big_log
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=30) as api, \
            api.stream("GET", f"/v1/jobs/{job}/log", params={"tail": 100_000}) as reply:
        received = 0
        for chunk in reply.iter_bytes():
            received += len(chunk)
            if received > 32 << 20:
                break
    assert received == 16 << 20, f"{received} bytes for a tail"


def test_repxctl_log_of_the_daemon_tails_and_takes_prefixes_literally(daemon_with_a_big_log):
    daemon, job = daemon_with_a_big_log
    env = dict(daemon.env, REPX_API=str(daemon.socket))
    tail = repxctl("log", "-n", "2", job, env=env, timeout=30)  # a full id, dots and all
    assert tail.code == 0 and tail.stdout == "line-2\nline-3\n", tail.stderr
    for wildcard in ("%", "_"):  # LIKE wildcards once matched, and printed, somebody's job
        refused = repxctl("log", wildcard, env=env)
        assert refused.code == 2 and f"no job matches {wildcard!r}" in refused.stderr


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
        for job in ("0000nosuchjob", "a/b", "a?b", ".."):
            result = repxctl("log", job, env=env)
            assert result.code == 2, result.stderr  # the README's code for a job that is not there
            assert len(result.stderr.strip().splitlines()) == 1 and f"no job matches {job!r}" in result.stderr
    finally:
        daemon.stop()


# 5,000,000 empty objects in 15 MB, under the file's size bound: decoded whole, they were ~400 MB.
DENSE_FLOOD_SCATTER = ('#!/usr/bin/env python3\nimport sys\n'
                       'open(sys.argv[1] + "/work_items.json", "w").write("[" + ",".join(["{}"] * 5000000) + "]")\n')


@pytest.mark.parametrize("scatter", [FLOOD_SCATTER, DENSE_FLOOD_SCATTER], ids=["50k-items", "5M-empty-items"])
def test_flood_of_work_items_keeps_the_daemon_small(tmp_path, scatter):
    """50,000 work items once took the daemon from 58 MB to 1.95 GB; now the job fails at the
    bound, and the daemon's peak memory (VmHWM) hardly moves."""
    daemon = Daemon.create()
    try:
        daemon.start("all")
        pid = daemon.processes["all"].pid
        before = proc_kib(pid, "VmHWM")
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        result = repxctl("run", "hostile", "--lab", scatter_lab(tmp_path / "lab", scatter), "--json", env=env, timeout=90)
        assert result.code == 1, result.stderr + daemon.logs()
        after = proc_kib(pid, "VmHWM")
        with unix_api(daemon) as api:
            (job,) = api.get("/v1/jobs").json()
        assert job["state"] == "failed" and "more than the 10000" in job["reason"], job
        print(f"daemon peak RSS before {before // 1024} MiB, after the flood {after // 1024} MiB")
        assert after - before < 100 * 1024
    finally:
        daemon.stop()


def unix_api(daemon: Daemon, timeout: float = 30) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=timeout)


def test_log_offset_resumes_at_a_byte(daemon_with_a_big_log):
    daemon, job = daemon_with_a_big_log
    with unix_api(daemon) as api:
        reply = api.get(f"/v1/jobs/{job}/log", params={"offset": (1 << 30) + len("line-1\n")})
        assert reply.status_code == 200 and reply.text == "line-2\nline-3\n"
        for bad in ({"offset": "abc"}, {"offset": -1}, {"offset": 7, "tail": 1}):
            assert api.get(f"/v1/jobs/{job}/log", params=bad).status_code == 400, bad


def test_concurrent_readers_of_a_big_log_keep_the_daemon_small_and_answering(daemon_with_a_big_log):
    """Three readers of a 1 GiB log once took the daemon to 7.4 GB and health to 13 s."""
    daemon, job = daemon_with_a_big_log
    pid = daemon.processes["all"].pid
    before, peak, health_times = rss_kib(pid), 0, []
    stop = threading.Event()

    def read_log() -> int:
        received = 0
        with unix_api(daemon, timeout=120) as api, api.stream("GET", f"/v1/jobs/{job}/log") as response:
            for chunk in response.iter_bytes(1 << 20):
                received += len(chunk)
                if stop.is_set():
                    break
        return received

    with ThreadPoolExecutor(3) as pool:
        readers = [pool.submit(read_log) for _ in range(3)]
        with unix_api(daemon) as api:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not all(r.done() for r in readers):
                started = time.monotonic()
                assert api.get("/v1/health").status_code == 200
                health_times.append(time.monotonic() - started)
                peak = max(peak, rss_kib(pid))
                time.sleep(0.2)
        stop.set()
        received = [r.result() for r in readers]
    print(f"RSS before {before // 1024} MiB, peak {peak // 1024} MiB; health worst {max(health_times) * 1000:.0f} ms "
          f"over {len(health_times)} probes; readers got {[r >> 20 for r in received]} MiB")
    assert all(r > 50 << 20 for r in received)
    assert peak - before < 150 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
    assert max(health_times) < 1.0


def submit_direct(api: httpx.Client, lab: Path, selection: list[str]) -> str:
    reply = api.post("/v1/runs", json={"lab": str(lab), "selection": selection})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def test_run_listing_pages_and_shortens_selections(tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        lab = LabWriter()
        lab.run("r").job("quick", "#!/bin/sh\necho hi\n", outputs={})
        lab_dir = lab.write(tmp_path / "lab")
        with unix_api(daemon) as api:
            long_run = submit_direct(api, lab_dir, ["r"] * 3000)
            others = [submit_direct(api, lab_dir, ["r"]) for _ in range(4)]
            pages, cursor = [], None
            while True:
                reply = api.get("/v1/runs", params={"limit": 2} | ({"before": cursor} if cursor else {}))
                assert reply.status_code == 200, reply.text
                pages.append([r["id"] for r in reply.json()])
                if "X-Next-Cursor" not in reply.headers:
                    break
                cursor = reply.headers["X-Next-Cursor"]
            assert [len(p) for p in pages] == [2, 2, 1]
            assert sum(pages, []) == [*reversed(others), long_run]
            (listed,) = [r for r in api.get("/v1/runs").json() if r["id"] == long_run]
            assert len(listed["selection"]) == 20 and listed["selection_count"] == 3000
            assert len(api.get(f"/v1/runs/{long_run}").json()["selection"]) == 3000
            assert api.get("/v1/runs", params={"before": "nosuchrun"}).status_code == 400
            assert api.post("/v1/runs", json={"lab": str(lab_dir), "selection": ["r"] * 10_001}).status_code == 400
            assert api.post("/v1/runs", json={"lab": str(lab_dir), "selection": ["r" * 513]}).status_code == 400
    finally:
        daemon.stop()


def test_tcp_openapi_needs_the_token_and_health_says_only_ok(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("s3cret-admin\n")
    daemon = Daemon.create(tcp=True, api_extra=f'admin_token_file = "{token}"\n')
    try:
        daemon.start("all")
        url = f"http://127.0.0.1:{daemon.ports['api']}"
        admin = {"Authorization": "Bearer s3cret-admin"}
        assert httpx.get(f"{url}/openapi.json").status_code == 401
        assert httpx.get(f"{url}/openapi.json", headers=admin).json()["openapi"].startswith("3.")
        assert httpx.get(f"{url}/v1/health").json() == {"status": "ok"}
        assert "version" in httpx.get(f"{url}/v1/health", headers=admin).json()
        # With tokens, TCP /metrics needs one too (test_listing_and_metrics has the metrics token).
        assert httpx.get(f"{url}/metrics").status_code == 401
        metrics = httpx.get(f"{url}/metrics", headers=admin)
        assert metrics.status_code == 200 and "repx_api_requests" in metrics.text
    finally:
        daemon.stop()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=30)
QUERY_NAMES = ["limit", "before", "after", "tail", "offset", "follow", "stream", "run", "job", "state", "agent"]


def segment(word: str) -> str:
    return quote(word, safe="")


def fuzz_body(path: str, lab_dir: Path):
    """Bodies for a POST: any JSON, or the route's own shape with hostile values. Labs stay below
    `lab_dir` and long polls short, so that every example answers within the fuzz's budget."""
    shaped = {
        "/v1/runs": st.fixed_dictionaries({"lab": WORDS.map(lambda w: str(lab_dir / w)) | st.just(str(lab_dir)),
                                           "selection": st.lists(WORDS | st.just("r"), max_size=5)},
                                          optional={"target": WORDS, "options": JSON}),
        "/v1/agents/{agent}/claim": st.fixed_dictionaries({"max": st.integers(-5, 2000), "wait": st.floats(0, 0.3)}),
        "/v1/agents": st.fixed_dictionaries({"id": WORDS, "host": WORDS}, optional={"inventory": JSON, "labels": JSON}),
        "/v1/agents/{agent}/heartbeat": st.fixed_dictionaries({}, optional={"running": JSON, "handles": JSON}),
        "/v1/attempts/{attempt}/report": st.fixed_dictionaries({"outcome": WORDS | st.just("failed")},
                                                               optional={"exit_status": JSON, "reason": JSON}),
        "/v1/agents/{agent}/reports": st.fixed_dictionaries({"reports": st.lists(
            st.fixed_dictionaries({"attempt": st.integers(-5, 10**12) | JSON, "outcome": WORDS | st.just("failed")},
                                  optional={"exit_status": JSON, "reason": JSON}), max_size=5)}),
    }.get(path)
    if path == "/v1/agents/{agent}/claim":
        return shaped  # arbitrary JSON could ask for a 60 s long poll
    return JSON | shaped if shaped is not None else JSON


def test_fuzzing_the_api_gives_no_5xx(tmp_path):
    daemon = Daemon.create()
    try:
        daemon.start("all")
        lab = LabWriter()
        lab.run("r").job("quick", "#!/bin/sh\necho hi\n", outputs={})
        lab_dir = lab.write(tmp_path / "lab")
        with unix_api(daemon, timeout=10) as api:
            run_id = submit_direct(api, lab_dir, ["r"])
            routes = [(method.upper(), path) for path, ops in api.get("/openapi.json").json()["paths"].items() for method in ops]
            known = {"run": [run_id, run_id[:4]], "job": ["0", "_", "%"], "agent": ["agent-1"], "attempt": ["1"],
                     "action": ["drain", "undrain"]}
            seen: dict[int, int] = {}
            budget = time.monotonic() + 45

            @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(data=st.data())
            def one_request(data):
                if time.monotonic() > budget:
                    return
                method, template = data.draw(st.sampled_from(routes))
                path = template
                for name in (p.strip("{}") for p in template.split("/") if p.startswith("{")):
                    path = path.replace("{" + name + "}", data.draw(st.sampled_from(known.get(name, [])) | WORDS.map(segment), label=name))
                query = data.draw(st.dictionaries(st.sampled_from(QUERY_NAMES) | WORDS, WORDS | st.integers().map(str), max_size=3))
                query.pop("follow", None)  # a followed log of a live job streams until the job ends
                kwargs = {"json": data.draw(fuzz_body(template, tmp_path / "labs"))} if method == "POST" else {}
                reply = api.request(method, path, params=query, **kwargs)
                seen[reply.status_code] = seen.get(reply.status_code, 0) + 1
                assert reply.status_code < 500, f"{method} {path} {query} {kwargs} -> {reply.status_code} {reply.text[:300]}"

            one_request()
            print(f"status codes seen: {dict(sorted(seen.items()))}")
            assert api.get("/v1/health").status_code == 200
        assert daemon.processes["all"].poll() is None, daemon.logs()
    finally:
        daemon.stop()


def test_fifo_exit_record_is_no_status_and_does_not_block(tmp_path):
    """A job running as the daemon's user can replace its exit record; adopting it at the next
    start must not hang the event loop on a FIFO."""
    guard = tmp_path / "proc"
    os.mkfifo(exit_file(guard))
    result: list = []
    reader = threading.Thread(target=lambda: result.append(adoptable_status(guard)), daemon=True)
    reader.start()
    reader.join(timeout=3)
    if reader.is_alive():  # the old read blocks until a writer comes: be that writer, then fail
        with open(exit_file(guard), "w") as fh:
            fh.write("0")
        reader.join()
        pytest.fail("reading a FIFO exit record blocked")
    assert result == [None]
    exit_file(guard).unlink()
    exit_file(guard).write_text("3\n")
    assert adoptable_status(guard) == 3


def test_an_address_that_is_not_the_api_is_one_line(tmp_path):
    """A web server at --api answering 200 with HTML once gave a JSONDecodeError traceback."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "status").write_text("<html>not repx</html>\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/status")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        result = repxctl("status", "--api", f"http://127.0.0.1:{port}")
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "other than JSON" in result.stderr and "REPX_API" in result.stderr
    finally:
        server.terminate()
        server.wait()
