"""GPU placement with real daemon processes: agents whose inventories come from the recorded
trees in tests/fixtures/hardware (REPX_HARDWARE_ROOT / REPX_HARDWARE_TOOLS), jobs asking for GPUs
through resource hints. Each job records the devices it was given and when it ran."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cli import repxctl
from service import Daemon

from repxd.lab.writer import LabWriter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hardware"

RECORD = """#!/bin/sh
set -eu
start=$(date +%s.%N)
sleep "$(cat "$3" | tr -d '{} ' | tr ',' '\\n' | sed -n 's/"sleep"://p')"
end=$(date +%s.%N)
printf '{"cuda": "%s", "rocr": "%s", "start": %s, "end": %s}\\n' \\
  "${CUDA_VISIBLE_DEVICES-unset}" "${ROCR_VISIBLE_DEVICES-unset}" "$start" "$end" > "$1/gpu.json"
"""


@pytest.fixture
def daemon():
    d = Daemon.create(lease=5.0, heartbeat=0.5)
    yield d
    d.stop()


def env(d: Daemon) -> dict:
    return {**d.env, "REPX_API": str(d.socket)}


def start_agent(d: Daemon, name: str, fixture: str, tmp_path: Path) -> Path:
    """An agent process named `name` whose hardware is a private copy of a recorded tree."""
    root = tmp_path / f"{name}-root"
    shutil.copytree(FIXTURES / fixture / "root", root)
    config = d.root / f"{name}.toml"
    config.write_text(d.config.read_text().replace('id = "agent-1"', f'id = "{name}"')
                      .replace(f'metrics = "127.0.0.1:{d.ports["agent"]}"', 'metrics = ""'))
    agent_env = {**d.env, "REPX_HARDWARE_ROOT": str(root), "REPX_HARDWARE_TOOLS": str(FIXTURES / fixture / "tools")}
    log = open(d.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    d.processes[name] = subprocess.Popen(["repxd", "agent", "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, env=agent_env)
    wait_for(lambda: any(a["id"] == name and a["state"] == "active" for a in call(d, "agents")), d, f"agent {name}")
    return root


def call(d: Daemon, *args):
    result = repxctl(*args, "--json", env=env(d))
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate, d: Daemon, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{d.logs()}"
        time.sleep(0.1)


def gpu_lab(tmp_path: Path, jobs: dict[str, list[tuple[dict, float]]]) -> tuple[Path, dict]:
    """runs -> [(resource hints, seconds)]; returns the Lab and each job's id by (run, position)."""
    writer = LabWriter()
    ids = {}
    for run_name, specs in jobs.items():
        run = writer.run(run_name)
        for i, (hints, seconds) in enumerate(specs):
            ids[run_name, i] = run.job("gpu", RECORD, params={"run": run_name, "n": i, "sleep": seconds},
                                       outputs={"gpu": "$out/gpu.json"}, resources=hints).id
    return writer.write(tmp_path / "lab"), ids


def attempts_of(d: Daemon, run_id: str) -> list[dict]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://repx") as client:
        return client.get("/v1/attempts", params={"run": run_id}).json()


def record(d: Daemon, job_id: str) -> dict:
    return json.loads((d.base / "outputs" / job_id / "out" / "gpu.json").read_text())


def test_gpus_are_assigned_without_oversubscription(daemon, tmp_path):
    d = daemon
    d.start("api")
    d.start("scheduler")
    start_agent(d, "dgx", "nvidia-dgx-a100", tmp_path)
    start_agent(d, "mi250", "amd-mi250", tmp_path)
    hw = {a["agent"]: a["hardware"] for a in call(d, "hardware")}
    assert len(hw["dgx"]["gpus"]) == 8 and len(hw["mi250"]["gpus"]) == 4
    assert call(d, "hardware", "--agent", "mi250")[0]["hardware"]["memory"]["cgroup_limit"] == 481036337152
    assert repxctl("hardware", "--agent", "nope", env=env(d)).code == 2

    lab, ids = gpu_lab(tmp_path, {"train": [({"gpus": 3}, 1.5)] * 6 + [({"gpus": 2}, 1.0)] * 2,
                                  "huge": [({"gpus": 9}, 0.1)]})
    huge_run = repxctl("run", "huge", "--lab", lab, "--detach", env=env(d)).stdout.strip()
    result = repxctl("run", "train", "--lab", lab, "--json", env=env(d), timeout=240)
    assert result.code == 0, result.stderr + d.logs()
    assert result.json()["counts"] == {"succeeded": 8}

    attempts = {a["job_id"]: a for a in attempts_of(d, result.json()["id"])}
    spans = []
    for i in range(8):
        job_id = ids["train", i]
        att, rec = attempts[job_id], record(d, job_id)
        wanted = 3 if i < 6 else 2
        assert len(att["devices"]) == wanted, att
        vendor = {"dgx": "nvidia", "mi250": "amd"}[att["agent_id"]]
        assert all(dev.startswith(vendor + ":") for dev in att["devices"])
        indices = ",".join(dev.split(":")[1] for dev in att["devices"])
        # The job saw exactly its devices, in its vendor's variable.
        assert (rec["cuda"], rec["rocr"]) == ((indices, "unset") if vendor == "nvidia" else ("unset", indices))
        spans.append((att["agent_id"], set(att["devices"]), rec["start"], rec["end"]))
    for n, (agent, devices, start, end) in enumerate(spans):
        for other_agent, other_devices, other_start, other_end in spans[n + 1:]:
            if agent == other_agent and devices & other_devices:
                assert end <= other_start or other_end <= start, f"GPUs {devices & other_devices} shared at once"
    assert max(sum(1 for s in spans if s[2] < t[2] < s[3]) for t in spans) >= 1  # jobs did run concurrently

    def huge_reason():
        (job,) = call(d, "jobs", "--run", huge_run)
        return job["state"], job["reason"]
    wait_for(lambda: huge_reason()[1], d, "an unschedulable reason")
    assert huge_reason() == ("pending", "unschedulable: needs 9 GPUs; largest agent has 8")
    table = repxctl("jobs", "--run", huge_run, env=env(d)).stdout
    assert "unschedulable: needs 9 GPUs; largest agent has 8" in table


def test_optional_gpu_falls_back_to_cpu_on_a_cpu_only_agent(daemon, tmp_path):
    d = daemon
    d.start("api")
    d.start("scheduler")
    start_agent(d, "vm", "cpu-vm", tmp_path)
    assert call(d, "hardware")[0]["hardware"]["gpus"] == []
    lab, ids = gpu_lab(tmp_path, {"maybe": [({"gpus": 1, "gpu": "optional"}, 0.1)], "must": [({"gpus": 1}, 0.1)]})
    must_run = repxctl("run", "must", "--lab", lab, "--detach", env=env(d)).stdout.strip()
    result = repxctl("run", "maybe", "--lab", lab, "--json", env=env(d), timeout=120)
    assert result.code == 0, result.stderr + d.logs()
    assert record(d, ids["maybe", 0])["cuda"] == "unset"
    assert attempts_of(d, result.json()["id"])[0]["devices"] == []

    def reason():
        return call(d, "jobs", "--run", must_run)[0]["reason"]
    wait_for(reason, d, "an unschedulable reason")
    assert reason() == "unschedulable: needs 1 GPU; no agent has GPUs"


def test_a_gpu_that_disappears_fails_the_attempt_and_the_job_runs_elsewhere(daemon, tmp_path):
    d = daemon
    d.start("api")
    d.start("scheduler")
    laptop = start_agent(d, "laptop", "intel-laptop", tmp_path)
    # Detected at registration, gone before the job starts (the manifest is the recording's /dev).
    manifest = laptop / "dev.manifest"
    manifest.write_text(manifest.read_text().replace("/dev/dri/renderD128\n", ""))
    lab, ids = gpu_lab(tmp_path, {"one": [({"gpus": 1}, 0.1)]})
    run_id = repxctl("run", "one", "--lab", lab, "--detach", env=env(d)).stdout.strip()

    def job():
        return call(d, "jobs", "--run", run_id)[0]
    wait_for(lambda: (job()["reason"] or "").startswith("unschedulable"), d, "the job to wait for a GPU")
    assert job()["state"] == "pending" and job()["reason"] == "unschedulable: needs 1 GPU; no agent has GPUs"
    (first,) = attempts_of(d, run_id)
    assert (first["agent_id"], first["state"], first["devices"]) == ("laptop", "error", ["intel:0"])
    assert first["reason"].startswith("GPU intel:0 (Intel Iris Xe Graphics (Tiger Lake), 0000:00:02.0) disappeared: "
                                      "/dev/dri/renderD128 missing")
    laptop_hw = call(d, "hardware", "--agent", "laptop")[0]["hardware"]
    assert laptop_hw["gpus"] == []  # re-registered without it

    start_agent(d, "dgx", "nvidia-dgx-a100", tmp_path)
    wait_for(lambda: call(d, "runs", run_id)["done"], d, "the run to finish")
    assert call(d, "runs", run_id)["state"] == "succeeded"
    first, second = attempts_of(d, run_id)
    assert (second["agent_id"], second["state"], second["devices"]) == ("dgx", "succeeded", ["nvidia:0"])
    assert record(d, ids["one", 0])["cuda"] == "0"


def embedded_run(tmp_path: Path, fixture: str, lab: Path, *selection: str):
    hardware = {"REPX_HARDWARE_ROOT": str(FIXTURES / fixture / "root"), "REPX_HARDWARE_TOOLS": str(FIXTURES / fixture / "tools")}
    return repxctl("run", *selection, "--lab", str(lab), "--base-path", str(tmp_path / "base"), "-j", "4",
                   "--continue-on-failure", env=hardware)


def test_embedded_runs_give_gpu_jobs_their_own_devices(tmp_path):
    lab, ids = gpu_lab(tmp_path, {"train": [({"gpus": 4}, 1.0)] * 3 + [({"gpus": 9}, 0)]})
    result = embedded_run(tmp_path, "nvidia-dgx-a100", lab, "train")
    assert result.code == 1, result.stderr
    assert "needs 9 GPUs; this machine has 8" in result.stdout
    runs = [json.loads((tmp_path / "base" / "outputs" / ids["train", i] / "out" / "gpu.json").read_text()) for i in range(3)]
    for job in runs:
        assert len(job["cuda"].split(",")) == 4 and job["rocr"] == "unset", job
    for a, b in ((0, 1), (0, 2), (1, 2)):
        overlap = runs[a]["start"] < runs[b]["end"] and runs[b]["start"] < runs[a]["end"]
        if overlap:
            assert not set(runs[a]["cuda"].split(",")) & set(runs[b]["cuda"].split(",")), (runs[a], runs[b])
    assert not all(runs[a]["start"] < runs[b]["end"] and runs[b]["start"] < runs[a]["end"]
                   for a, b in ((0, 1), (0, 2), (1, 2))), "three 4-GPU jobs ran at once on 8 GPUs"


def test_embedded_optional_gpu_runs_on_the_cpu_of_a_machine_without_gpus(tmp_path):
    lab, ids = gpu_lab(tmp_path, {"fit": [({"gpus": 1, "gpu": "optional"}, 0), ({"gpus": 1}, 0)]})
    result = embedded_run(tmp_path, "cpu-vm", lab, "fit")
    assert result.code == 1
    assert "needs 1 GPU; this machine has no GPU" in result.stdout
    optional = json.loads((tmp_path / "base" / "outputs" / ids["fit", 0] / "out" / "gpu.json").read_text())
    assert optional["cuda"] == "unset"
