"""kill -9 of any role at any moment, then restart: the run completes, no job is lost, no
succeeded job executes again and no job runs twice at once."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from cli import repxctl
from service import Daemon

from repxd.lab.writer import LabWriter

JOBS = 200
KILLS = 30
LAYER = 20


def crash_lab(root: Path, executions: Path) -> tuple[Path, list[str]]:
    """Ten layers of twenty jobs; each job depends on two of the layer before, takes 0.3–0.6 s and
    appends its name to `executions` when it starts and when it ends."""
    rng = random.Random(7)
    lab = LabWriter()
    run = lab.run("crash")
    ids, previous = [], []
    for layer in range(JOBS // LAYER):
        current = []
        for i in range(LAYER):
            name = f"L{layer}-{i}"
            script = (f"#!/bin/sh\necho 'start {name}' >> {executions}\nsleep {rng.uniform(0.3, 0.6):.2f}\n"
                      f"echo ok > \"$1/o\"\necho 'end {name}' >> {executions}\n")
            inputs = {f"in{k}": previous[(i + k) % LAYER].output("o") for k in range(2)} if previous else {}
            ref = run.job(f"step{layer}", script, params={"i": i}, inputs=inputs, outputs={"o": "$out/o"})
            current.append(ref)
            ids.append(ref.id)
        previous = current
    return lab.write(root / "lab"), ids


def run_state(d: Daemon, run_id: str) -> dict:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://repx", timeout=10) as client:
        for _ in range(100):
            try:
                return client.get(f"/v1/runs/{run_id}").json()
            except httpx.TransportError:
                time.sleep(0.1)  # the API is being restarted
    raise AssertionError("the API did not answer")


def test_random_kills_lose_nothing_and_run_nothing_twice():
    d = Daemon.create(lease=1.5, heartbeat=0.3, extra="")
    d.config.write_text(d.config.read_text().replace("[agent]\n", "[agent]\nslots = 4\n"))
    root = Path(tempfile.mkdtemp(prefix="repx-crash-"))
    executions = root / "executions.log"
    lab, ids = crash_lab(root, executions)
    roles = ("api", "scheduler", "agent")
    try:
        for role in roles:
            d.start(role)
        env = dict(os.environ, REPX_API=str(d.socket))
        submitted = repxctl("run", "crash", "--lab", lab, "--detach", env=env)
        assert submitted.code == 0, submitted.stderr + d.logs()
        run_id = submitted.stdout.strip()

        rng = random.Random(int(os.environ.get("REPX_CRASH_SEED", "1")))
        kills = Counter()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.6))
            role = rng.choice(roles)
            d.kill(role)
            kills[role] += 1
            d.start(role)
        early = run_state(d, run_id)
        assert not early["done"], f"the run ended before all kills happened: {early}\n{d.logs()[-20000:]}"

        deadline = time.monotonic() + 240
        while not (state := run_state(d, run_id))["done"]:
            assert time.monotonic() < deadline, f"run did not finish: {state}\n{d.logs()}"
            time.sleep(0.5)
        assert state["state"] == "succeeded", f"{state}\n{d.logs()}"
        assert state["counts"] == {"succeeded": JOBS}

        # Every job ran exactly once: one start and one end, and never two at once.
        lines = executions.read_text().splitlines()
        starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
        ends = Counter(line.split()[1] for line in lines if line.startswith("end"))
        assert len(starts) == JOBS and set(starts.values()) == {1}, [n for n, c in starts.items() if c > 1]
        assert ends == starts

        # The evidence agrees: the last completion of every job is "ok".
        last = {}
        for line in (d.base / "outputs" / "completions.jsonl").read_text().splitlines():
            record = json.loads(line)
            last[record["id"]] = record["s"]
        assert last == dict.fromkeys(ids, "ok")

        # The attempts table: at most one succeeded attempt per job; the others were lost with an
        # agent. A job whose only attempts were lost finished in its adopted process, and the
        # scheduler took its SUCCESS marker as the outcome instead of running it again.
        jobs = json.loads(repxctl("jobs", "--run", run_id, "--json", env=env).stdout)
        assert {j["state"] for j in jobs} == {"succeeded"}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://repx") as client:
            table = client.get("/v1/attempts", params={"run": run_id}).json()
        assert {a["state"] for a in table} <= {"succeeded", "lost"}
        succeeded = Counter(a["job_id"] for a in table if a["state"] == "succeeded")
        assert set(succeeded.values()) <= {1}
        for job in jobs:
            if job["job_id"] not in succeeded:
                assert job["reason"] == "already succeeded (SUCCESS marker)", job
                assert any(a["job_id"] == job["job_id"] and a["state"] == "lost" for a in table)
        assert sum(kills.values()) == KILLS
    finally:
        d.stop()
