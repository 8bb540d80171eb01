"""The daemon: API latency under concurrent clients, end-to-end throughput of a no-op DAG through
`repxd all` and through api, scheduler and agent as separate processes (next to the embedded engine on the same DAG), recovery after kill -9, and its memory with a
100,000-job Lab submitted.

Every daemon runs in a fresh directory with a private Unix socket and loopback metrics ports.

    python bench/daemon.py                  # 30 s latency phases, 10,000-job DAG
    python bench/daemon.py --quick          # 5 s phases, 1,000 jobs
    python bench/daemon.py --only throughput --jobs 5000 --slots 8
    python bench/daemon.py --quick --only throughput --py-spy .bench/daemon/all.svg   # profile `repxd all`
    python bench/daemon.py --only memory    # RSS (VmHWM) of `repxd all` with a 100,000-job Lab submitted
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from dag import JOB_SCRIPT, OUTPUT_FILE, RUN_NAME, default_width, write_lab
from throughput import last_cpu, run_limit

from repxd.lab.writer import LabWriter

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench" / "daemon"
BIN = Path(sys.executable).parent
READ_P99_GOAL, SUBMIT_P50_GOAL, THROUGHPUT_GOAL, RECOVERY_GOAL = 0.025, 0.050, 300.0, 2.0
RSS_GOAL_MB = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A repxd.toml in its own directory and its roles running it: `repxd all` (one process), or
    `repxd api`, `repxd scheduler` and `repxd agent` as separate processes."""

    def __init__(self, slots: int, roles: tuple[str, ...] = ("all",)) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="repx-bench-daemon-"))
        self.socket, self.base, self.log = self.root / "api.sock", self.root / "base", self.root / "repxd.log"
        self.config = self.root / "repxd.toml"
        self.config.write_text(
            f'state_dir = "{self.root / "state"}"\nlog_level = "info"\n[api]\nsocket = "{self.socket}"\n'
            f'[scheduler]\nmetrics = "127.0.0.1:{free_port()}"\n'
            f'[agent]\nid = "bench-agent"\nslots = {slots}\ncpus = {slots}\nmetrics = "127.0.0.1:{free_port()}"\n'
            # The bench submits as the user running it (maybe root, the daemon's user): its no-op
            # jobs may run as that user, which the agent refuses unless told.
            'allow_jobs_as_daemon_user = true\n'
            f'[targets.local]\nbase_path = "{self.base}"\n')
        self.roles = roles
        self.procs: dict[str, subprocess.Popen] = {}
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://repx", timeout=600)

    @property
    def proc(self) -> subprocess.Popen:
        """The process that serves the API (`repxd all`, or `repxd api`)."""
        return self.procs[self.roles[0]]

    def start(self) -> float:
        """Start the roles; returns the seconds until /v1/health answers."""
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            for role in self.roles:
                self.procs[role] = subprocess.Popen([str(BIN / "repxd"), role, "--config", str(self.config)],
                                                    stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - started < 60:
            try:
                if self.http.get("/v1/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if any(p.poll() is not None for p in self.procs.values()):
                break
            time.sleep(0.005)
        raise RuntimeError(f"repxd {' '.join(self.roles)} did not come up; log:\n{self.log.read_text()[-3000:]}")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def submit(self, lab: Path, run: str = RUN_NAME) -> dict:
        return self.call("POST", "/v1/runs", {"lab": str(lab), "selection": [run]})

    def cpu(self) -> float:
        """CPU seconds of the roles and their descendants so far: the jobs (finished children) and
        the listing helper of lab_access with its per-submitter workers (live ones too)."""
        stats = {}
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            stats[int(stat_file.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
        ours = {proc.pid for proc in self.procs.values()}
        while more := {pid for pid, (parent, _) in stats.items() if parent in ours and pid not in ours}:
            ours |= more
        return sum(stats[pid][1] for pid in ours if pid in stats) / os.sysconf("SC_CLK_TCK")

    def wait_done(self, run_id: str, timeout: float = 3600, poll: float = 0.1) -> dict:
        """Poll the run (a count over its jobs: not too often, it competes with the run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.call("GET", f"/v1/runs/{run_id}")
            if run["done"]:
                return run
            time.sleep(poll)
        raise RuntimeError(f"run {run_id} not done after {timeout} s: {run['counts']}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for proc in reversed(self.procs.values()):  # the API last: the agent reports to it on the way out
            if proc.poll() is None:
                proc.send_signal(sig)
                proc.wait(timeout=60)

    def close(self) -> None:
        self.stop()
        self.http.close()
        shutil.rmtree(self.root, ignore_errors=True)


def cached_lab(n: int) -> Path:
    work = BENCH / f"n{n}"
    stamp = work / "dag.json"
    key = {"n": n, "width": default_width(n), "version": 1}
    if not (stamp.exists() and json.loads(stamp.read_text()) == key):
        print(f"  writing a {n}-job Lab under {work.relative_to(ROOT)} (once) ...", flush=True)
        shutil.rmtree(work, ignore_errors=True)
        write_lab(work / "lab", n)
        stamp.write_text(json.dumps(key))
    return work / "lab"


# The submit phase's clients are this many distinct users (uids with no passwd entry: the
# socket names a peer by its uid; allowed_groups is empty, so any uid may submit). The API lets
# one user load at most two submissions at once (429 beyond): as one user, 200 clients measure
# that limit, not a submit.
SUBMIT_UID_BASE = 61000


def connect_as(sock: Path, uid: int | None) -> socket.socket:
    """A connection to the API socket whose peer credentials (taken at connect) are `uid`'s."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if uid is None:
        conn.connect(str(sock))
        return conn
    os.setegid(uid)
    os.seteuid(uid)
    try:
        conn.connect(str(sock))
    finally:
        os.seteuid(0)
        os.setegid(0)
    return conn


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection; the answer's status and body. A minimal
    client: the bench's own CPU competes with the daemon's on the same cores."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def hammer(sock: Path, method: str, path: str, body: dict | None, clients: int, seconds: float,
                 uids: list[int] | None = None) -> dict:
    """`clients` coroutines, each with its own connection (as uids[i % len(uids)] when given),
    issuing requests back to back for `seconds`."""
    latencies: list[float] = []
    failures: list[str] = []
    payload = json.dumps(body).encode() if body is not None else b""
    request = (f"{method} {path} HTTP/1.1\r\nHost: repx\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    connections = [connect_as(sock, uids[i % len(uids)] if uids else None) for i in range(clients)]
    deadline = time.perf_counter() + seconds

    async def client(conn: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=conn, limit=1 << 24)
        try:
            sent = 0
            while not sent or time.perf_counter() < deadline:  # one request at least
                sent += 1
                started = time.perf_counter()
                status, answer = await exchange(reader, writer, request)
                if status >= 300:
                    failures.append(f"{status} {answer[:120].decode(errors='replace')}")
                    continue
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"{method} {path}: no request succeeded ({failures[:3]})")
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "errors": len(failures), "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(0.99 * len(latencies))],
            "mean_ms": 1000 * statistics.fmean(latencies), "max_ms": 1000 * latencies[-1],
            "error_kinds": collections.Counter(failures).most_common(3)}


def show(label: str, r: dict) -> None:
    print(f"  {label:<24} {r['clients']:>3} clients: p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
          f"mean {r['mean_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms  {r['rps']:6.0f} req/s  "
          f"{r['cpu_us']:5.0f} us daemon CPU/req  ({r['requests']} ok, {r['errors']} errors)", flush=True)
    for kind, count in r["error_kinds"]:
        print(f"    {count} x {kind}", flush=True)


def phases(d: Daemon, label: str, request: tuple, levels: list[int], seconds: float, uids: list[int] | None = None) -> dict:
    """One closed-loop phase per concurrency level; the largest gets `seconds`, the others at most 5 s."""
    out = {}
    for clients in levels:
        cpu = d.cpu()
        r = asyncio.run(hammer(d.socket, *request, clients, seconds if clients == levels[-1] else min(5.0, seconds), uids))
        r["cpu_us"] = 1e6 * (d.cpu() - cpu) / r["requests"]
        show(label, r)
        out[clients] = r
    return out


def bench_latency(args) -> dict:
    print("API latency (repxd all; closed loop: each client sends its next request when the last one is answered):", flush=True)
    lab = cached_lab(args.small)
    d = Daemon(args.slots)
    try:
        d.start()
        run = d.wait_done(d.submit(lab)["id"])
        assert run["state"] == "succeeded", run
        levels = sorted({1, min(20, args.clients), args.clients})
        reads = phases(d, "GET /v1/runs/{id}", ("GET", f"/v1/runs/{run['id']}", None), levels, args.seconds)
        read_verdict(reads[args.clients], args.clients)
        # The same reads of a run that is still going: one job holds (sleeping) with jobs queued
        # behind it, so the run is active and nothing changes but what the daemon stores anyway.
        held = d.submit(held_lab(d.root), "hold")["id"]
        while d.call("GET", f"/v1/runs/{held}")["counts"].get("running", 0) < 1:
            time.sleep(0.05)
        active = phases(d, "GET active run", ("GET", f"/v1/runs/{held}", None), levels, args.seconds)
        assert not d.call("GET", f"/v1/runs/{held}")["done"], "the held run ended during its phase"
        read_verdict(active[args.clients], args.clients)
        d.call("POST", f"/v1/runs/{held}/cancel")
        # And of a run whose jobs are changing state while it is read: every stored change makes
        # the next read count the run's jobs again.
        busy = d.submit(cached_lab(args.busy_jobs))["id"]
        while (before := d.call("GET", f"/v1/runs/{busy}")["counts"].get("succeeded", 0)) < 100:
            time.sleep(0.05)  # the agent loads the Lab first: read it once jobs flow
        progressing = phases(d, "GET progressing run", ("GET", f"/v1/runs/{busy}", None), [args.clients], min(5.0, args.seconds))
        after = d.call("GET", f"/v1/runs/{busy}")
        print(f"    {after['counts'].get('succeeded', 0) - before} of its {args.busy_jobs} jobs succeeded during the phase; "
              f"the run {'finished within it' if after['done'] else 'was still active at its end'}", flush=True)
        d.call("POST", f"/v1/runs/{busy}/cancel")
        # Its jobs succeeded already: loading (cached), planning and the store. Each client is a
        # user of its own when the bench is root (the daemon then reads the Lab as that user:
        # lab_access lists its files as them on every submit); else all are the bench's user.
        uids = [SUBMIT_UID_BASE + i for i in range(args.clients)] if os.geteuid() == 0 else None
        shared = shared_copy(lab, d.root)
        body = {"lab": str(shared), "selection": [RUN_NAME]}
        # Untimed: each user's first submission, which copies the Lab as that user (lab_access);
        # the phases then measure submissions of an unchanged Lab.
        asyncio.run(hammer(d.socket, "POST", "/v1/runs", body, args.clients, 0.0, uids))
        submits = phases(d, f"POST /v1/runs ({args.small} jobs)", ("POST", "/v1/runs", body), [1, args.clients],
                         args.submit_seconds, uids)
        top = submits[args.clients]
        verdict = "meets" if top["p50_ms"] <= 1000 * SUBMIT_P50_GOAL else "misses"
        print(f"    submit p50 {verdict} the goal of {1000 * SUBMIT_P50_GOAL:.0f} ms at {args.clients} clients, "
              f"{'one user each' if uids else 'all one user (not root: expect 429s)'}", flush=True)
    finally:
        d.close()
    return {"reads": reads, "active_reads": active, "progressing_reads": progressing, "submits": submits}


def read_verdict(top: dict, clients: int) -> None:
    verdict = "meets" if top["p99_ms"] <= 1000 * READ_P99_GOAL else "misses"
    print(f"    read p99 {verdict} the goal of {1000 * READ_P99_GOAL:.0f} ms at {clients} clients "
          f"(Little's law: {clients} clients / {top['rps']:.0f} req/s = {1000 * clients / top['rps']:.0f} ms mean)", flush=True)


def held_lab(root: Path, queued: int = 10) -> Path:
    """A Lab whose run `hold` stays active: its first job sleeps (until the run is cancelled) and
    `queued` jobs wait for it."""
    lab = LabWriter()
    run = lab.run("hold")
    first = run.job("holder", '#!/bin/sh\nsleep 3600\n: > "$1/out.txt"\n', outputs={"data": "$out/out.txt"})
    for i in range(queued):
        run.job("behind", JOB_SCRIPT, params={"i": i}, inputs={"in": first.output("data")}, outputs={"data": f"$out/{OUTPUT_FILE}"})
    return lab.write(root / "held-lab")


def shared_copy(lab: Path, root: Path) -> Path:
    """The Lab where any user can read it (the submit phase's users have no home of their own)."""
    shared = root / "shared-lab"
    shutil.copytree(lab, shared, symlinks=True)
    root.chmod(0o755)
    for top, dirs, files in os.walk(shared):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)
        for name in files:
            path = os.path.join(top, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
    return shared


def run_embedded(lab: Path, n: int, slots: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="repx-bench-embedded-"))
    argv = [str(BIN / "repxctl"), "run", RUN_NAME, "--lab", str(lab), "--base-path", str(base), "--embedded",
            "-j", str(slots), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    shutil.rmtree(base, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"embedded run failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["executed"] == n, {k: summary[k] for k in ("ok", "executed")}
    return {"seconds": summary["seconds"], "wall": wall, "jobs_per_s": n / summary["seconds"], "cpu_ms_per_job": 1000 * cpu / n}


def daemon_run(args, lab: Path, n: int, roles: tuple[str, ...]) -> dict:
    """The DAG submitted to a fresh daemon of `roles`, timed from submit to done."""
    d = Daemon(args.slots, roles)
    try:
        d.start()
        # A .txt profile is py-spy's collapsed stacks (one line per stack and its count), for grep and sort.
        form = ["--format", "raw"] if args.py_spy and args.py_spy.suffix == ".txt" else []
        spy = args.py_spy and roles == ("all",) and subprocess.Popen(
            ["py-spy", "record", "--threads", "-r", "200", *form, "-o", str(args.py_spy), "-p", str(d.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu, load, started = d.cpu(), os.getloadavg()[0], time.perf_counter()
        run = d.submit(lab)
        submitted = time.perf_counter() - started
        run = d.wait_done(run["id"])
        seconds, cpu = time.perf_counter() - started, d.cpu() - cpu
        assert run["state"] == "succeeded" and run["counts"] == {"succeeded": n}, run
        if spy:
            spy.send_signal(signal.SIGINT)  # py-spy writes its flame graph and exits
            spy.wait(timeout=60)
    finally:
        d.close()
    result = {"seconds": seconds, "submit_seconds": submitted, "jobs_per_s": n / seconds, "cpu_ms_per_job": 1000 * cpu / n,
              "load_at_start": load}
    verdict = "meets" if result["jobs_per_s"] >= THROUGHPUT_GOAL else "misses"
    label = "repxd all" if roles == ("all",) else "3 roles"
    print(f"  {label + ':':<10} {seconds:7.2f} s submit-to-done ({submitted:.2f} s of it the submit): "
          f"{result['jobs_per_s']:6.0f} jobs/s ({verdict} the goal of {THROUGHPUT_GOAL:.0f}); "
          f"{result['cpu_ms_per_job']:.1f} ms CPU per job (daemon and jobs); load {load:.1f}", flush=True)
    return result


def bench_throughput(args) -> dict:
    n = args.jobs
    print(f"End-to-end throughput, {n}-job no-op DAG (width {default_width(n)}), agent slots={args.slots}:", flush=True)
    lab = cached_lab(n)
    daemon = daemon_run(args, lab, n, ("all",))
    if args.py_spy:
        print(f"  profile:   {args.py_spy} (py-spy flame graph of every thread of `repxd all` during the run)", flush=True)
    roles = daemon_run(args, lab, n, ("api", "scheduler", "agent")) if args.roles else None
    embedded = run_embedded(lab, n, args.slots)
    print(f"  embedded:  {embedded['seconds']:7.2f} s (its \"seconds\"; {embedded['wall']:.2f} s wall with startup"
          f" and planning): {embedded['jobs_per_s']:6.0f} jobs/s, -j {args.slots}; {embedded['cpu_ms_per_job']:.1f} ms CPU"
          " per job (startup and planning included)", flush=True)
    seconds = run_limit(lab.parent, n, args.slots, 600.0, dict(os.environ))
    limit = {"seconds": seconds, "jobs_per_s": n / seconds, "cpu_ms_per_job": 1000 * last_cpu[0] / n}
    share = lambda r: f"{r['jobs_per_s'] / limit['jobs_per_s']:.0%}"  # noqa: E731
    print(f"  limit:     {seconds:7.2f} s: {limit['jobs_per_s']:6.0f} jobs/s (xargs -P {args.slots}, one bash per job, "
          f"see throughput.py); repxd all {share(daemon)} of it{f', 3 roles {share(roles)}' if roles else ''}, "
          f"embedded {share(embedded)}", flush=True)
    of_embedded = lambda r: f"{r['jobs_per_s'] / embedded['jobs_per_s']:.0%}"  # noqa: E731
    print(f"  daemon / embedded: repxd all {of_embedded(daemon)}"
          f"{', 3 roles ' + of_embedded(roles) if roles else ''} (goal >= 50%)", flush=True)
    return {"daemon": daemon, "roles": roles, "embedded": embedded, "limit": limit}


def memory_kb(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak (VmHWM), in kB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def bench_memory(args) -> dict:
    n = args.memory_jobs
    print(f"Memory of `repxd all` with a {n}-job Lab submitted (then {args.settle:.0f} s of running it):", flush=True)
    lab = cached_lab(n)
    d = Daemon(args.slots)
    try:
        d.start()
        idle = memory_kb(d.proc.pid)
        started = time.perf_counter()
        run = d.submit(lab)
        submitted = time.perf_counter() - started
        after_submit = memory_kb(d.proc.pid)
        time.sleep(args.settle)  # the scheduler places, the agent loads the Lab and runs jobs
        running = memory_kb(d.proc.pid)
        counts = d.call("GET", f"/v1/runs/{run['id']}")["counts"]
    finally:
        d.close()
    peak = running["VmHWM"] / 1024
    verdict = "meets" if peak <= RSS_GOAL_MB else "misses"
    print(f"  idle {idle['VmRSS'] / 1024:.0f} MB; submit took {submitted:.1f} s, then RSS {after_submit['VmRSS'] / 1024:.0f} MB; "
          f"after {args.settle:.0f} s RSS {running['VmRSS'] / 1024:.0f} MB, peak (VmHWM) {peak:.0f} MB "
          f"({verdict} the goal of {RSS_GOAL_MB} MB); jobs then: {counts}", flush=True)
    return {"idle_kb": idle, "after_submit_kb": after_submit, "running_kb": running, "submit_seconds": submitted}


def log_after(path: Path, offset: int, needle: str) -> bool:
    return needle.encode() in path.read_bytes()[offset:]


def bench_recovery(args) -> dict:
    n = args.jobs
    print(f"Recovery after kill -9 with a {n}-job run in the store:", flush=True)
    lab = cached_lab(n)
    d = Daemon(args.slots)
    try:
        d.start()
        run_id = d.submit(lab)["id"]
        while d.call("GET", f"/v1/runs/{run_id}")["counts"].get("succeeded", 0) < min(n // 10, 500):
            time.sleep(0.02)
        d.stop(signal.SIGKILL)
        before, restarted = d.log.stat().st_size, time.time()
        health = d.start()
        started, ready, placed = time.perf_counter() - health, None, []
        while ready is None and time.perf_counter() - started < 60:
            ready = time.perf_counter() - started if log_after(d.log, before, "scheduler ready") else None
            time.sleep(0.002)
        counts = d.call("GET", f"/v1/runs/{run_id}")["counts"]
        while not placed and time.perf_counter() - started < 60:  # attempts record when they were placed
            placed = [a["created"] - restarted for a in d.call("GET", f"/v1/attempts?run={run_id}") if a["created"] >= restarted]
            time.sleep(0.05)
        first = min(placed, default=None)
        final = d.wait_done(run_id) if args.finish else None
    finally:
        d.close()
    out = {"health_s": health, "ready_s": ready, "first_placed_s": first, "counts_at_restart": counts}
    fmt = lambda s: "n/a" if s is None else f"{s:.2f} s"  # noqa: E731
    verdict = "meets" if ready is not None and ready <= RECOVERY_GOAL else "misses"
    print(f"  restart -> /v1/health answers: {fmt(health)}; -> 'scheduler ready' logged: {fmt(ready)} "
          f"({verdict} the goal of {RECOVERY_GOAL:.0f} s); -> first job placed: {fmt(first)}", flush=True)
    print(f"  jobs at restart: {counts}", flush=True)
    if final is not None:
        print(f"  the run then finished: {final['state']} {final['counts']}", flush=True)
        out["final"] = final["counts"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s latency phases and 1,000 jobs")
    parser.add_argument("--only", choices=("latency", "throughput", "recovery", "memory"), action="append")
    parser.add_argument("--seconds", type=float, help="duration of the read phase (default 30, quick 5)")
    parser.add_argument("--submit-seconds", type=float, help="duration of the submit phase (default 10, quick 3)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--jobs", type=int, help="jobs in the DAG (default 10000, quick 1000)")
    parser.add_argument("--small", type=int, default=10, help="jobs in the Lab read and submitted in the latency phase")
    parser.add_argument("--busy-jobs", type=int, default=2000, help="jobs in the run read while it progresses (latency phase)")
    parser.add_argument("--slots", type=int, default=8, help="the agent's slots (and -j of the embedded run)")
    parser.add_argument("--py-spy", type=Path, help="record the throughput daemon with py-spy (pip install py-spy) to this SVG")
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="jobs in the Lab of the memory phase")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the memory phase lets the run go before reading")
    parser.add_argument("--no-roles", dest="roles", action="store_false",
                        help="throughput: skip the run with api, scheduler and agent as separate processes")
    parser.add_argument("--no-finish", dest="finish", action="store_false", help="do not wait for the recovered run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.seconds = args.seconds or (5.0 if args.quick else 30.0)
    args.submit_seconds = args.submit_seconds or (3.0 if args.quick else 10.0)
    args.jobs = args.jobs or (1000 if args.quick else 10000)
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}", flush=True)
    benches = {"latency": bench_latency, "throughput": bench_throughput, "recovery": bench_recovery, "memory": bench_memory}
    results = {name: fn(args) for name, fn in benches.items() if not args.only or name in args.only}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
