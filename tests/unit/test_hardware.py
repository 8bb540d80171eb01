"""Hardware detection on recorded trees (tests/fixtures/hardware, see SOURCES.md) and on this
machine; GPU requests; the devices an attempt is granted; the scheduler's GPU placement."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from repxd.cli import cli
from repxd.engine.scheduler import Capacity, Scheduler, unschedulable
from repxd.errors import ConfigError
from repxd.hardware import (
    DevicesMissing,
    Inventory,
    agent_inventory,
    check_present,
    detect,
    device_allow,
    gpu_request,
    grant_for,
    read_inventory,
    without_gpus,
)
from repxd.hardware import gpus as gpus_module
from repxd.user_config import Resources

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hardware"


def fixture(name: str) -> Inventory:
    return detect(FIXTURES / name / "root", FIXTURES / name / "tools")


def test_nvidia_data_centre_node():
    inv = fixture("nvidia-dgx-a100")
    assert inv.host == "dgx-a100-01"
    assert (inv.cpu.model, inv.cpu.cores, inv.cpu.logical) == ("AMD EPYC 7742 64-Core Processor", 256, 256)
    assert "avx2" in inv.cpu.flags
    assert inv.memory.total == 1056610380 * 1024 and inv.memory.cgroup_limit is None
    assert [g.id for g in inv.gpus] == [f"nvidia:{i}" for i in range(8)]
    assert {g.model for g in inv.gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert [g.pci_bus_id for g in inv.gpus] == [f"0000:{b}:00.0" for b in ("07", "0f", "47", "4e", "87", "90", "b7", "bd")]
    assert inv.gpus[2].uuid == "GPU-0c2d4e6f-8a1b-4c3d-8e5f-2a3b4c5d6e7f" and inv.gpus[2].devices == ["/dev/nvidia2"]
    assert all(g.memory == 81920 * 2**20 for g in inv.gpus)  # from nvidia-smi: procfs has no memory size
    assert inv.shared_devices == {"nvidia": ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]}
    assert inv.drivers == {"nvidia": "535.129.03"}
    assert inv.cdi == ["nvidia.com/gpu"]
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in inv.driver_paths
    assert inv.sources == ["proc", "nvidia-smi"]  # the ASPEED BMC card (0x1a03) is no GPU


def test_nvidia_without_nvidia_smi_uses_procfs_only(tmp_path):
    inv = detect(FIXTURES / "nvidia-dgx-a100" / "root", tmp_path)  # an empty tools directory
    assert len(inv.gpus) == 8 and inv.gpus[0].memory is None and inv.gpus[0].model == "NVIDIA A100-SXM4-80GB"
    assert inv.drivers == {"nvidia": "535.129.03"}  # from /proc/driver/nvidia/version


def test_nvidia_smi_alone_gives_minor_numbers(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "nvidia-dgx-a100" / "root", root)
    shutil.rmtree(root / "proc" / "driver")
    inv = detect(root, FIXTURES / "nvidia-dgx-a100" / "tools")
    assert [g.devices for g in inv.gpus][:2] == [["/dev/nvidia0"], ["/dev/nvidia1"]]
    assert inv.sources == ["proc", "nvidia-smi"]


def test_amd_node_orders_gpus_as_rocr_does():
    inv = fixture("amd-mi250")
    assert inv.host == "mi250-node07" and inv.cpu.cores == 128
    assert inv.memory.cgroup_limit == 481036337152 and inv.memory.usable == 481036337152
    # KFD topology node order (what ROCR_VISIBLE_DEVICES indexes), not render-node order.
    assert [(g.id, g.pci_bus_id, g.devices[0]) for g in inv.gpus] == [
        ("amd:0", "0000:2f:00.0", "/dev/dri/renderD129"), ("amd:1", "0000:29:00.0", "/dev/dri/renderD128"),
        ("amd:2", "0000:af:00.0", "/dev/dri/renderD131"), ("amd:3", "0000:a9:00.0", "/dev/dri/renderD130")]
    assert inv.gpus[1].devices == ["/dev/dri/renderD128", "/dev/dri/card1"]
    assert inv.gpus[0].model == "AMD INSTINCT MI250 (MCM) OAM AC MBA" and inv.gpus[0].uuid == "GPU-719d230578348e8c"
    assert inv.gpus[0].memory == 68702699520
    assert inv.shared_devices == {"amd": ["/dev/kfd"]} and inv.drivers == {"amd": "6.2.4"}
    assert inv.sources == ["proc", "sysfs", "kfd", "rocm-smi"]


def test_intel_laptop():
    inv = fixture("intel-laptop")
    assert inv.cpu.model == "11th Gen Intel(R) Core(TM) i7-1185G7 @ 3.00GHz" and inv.cpu.cores == 8
    (gpu,) = inv.gpus  # connectors (card0-eDP-1) are no cards
    assert (gpu.id, gpu.model, gpu.pci_bus_id) == ("intel:0", "Intel Iris Xe Graphics (Tiger Lake)", "0000:00:02.0")
    assert gpu.devices == ["/dev/dri/renderD128", "/dev/dri/card0"]
    assert inv.shared_devices == {} and inv.driver_paths == [] and inv.cdi == []


def test_cpu_only_vm_recording():
    inv = fixture("cpu-vm")
    assert inv.gpus == [] and inv.shared_devices == {} and inv.cpu.cores == 2 and inv.memory.total > 0
    assert inv.memory.cgroup_limit is None  # cgroup v1 reports "no limit" as 2^63 - 4096


def test_this_machine_is_cpu_only():
    if Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").exists() or Path("/dev/kfd").exists() or list(Path("/dev").glob("dri/renderD*")):
        pytest.skip("this machine has GPU device nodes")
    inv = detect("/")
    assert inv.gpus == [] and inv.root == "/"
    assert inv.cpu.cores == len(os.sched_getaffinity(0))
    assert inv.memory.total > 0 and 0 < inv.memory.usable <= inv.memory.total


def test_nvml_is_preferred_when_importable(monkeypatch):
    """A small fake of nvidia-ml-py's module: only the calls detection makes."""
    memory = types.SimpleNamespace(total=16 * 2**30)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: b"Tesla T4",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}", nvmlDeviceGetMinorNumber=lambda h: 1 - h,
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=f"00000000:{0x3b + h:02X}:00.0".encode()),
        nvmlDeviceGetMemoryInfo=lambda h: memory, nvmlSystemGetDriverVersion=lambda: "550.54.15")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = gpus_module.nvidia(gpus_module.Root("/"))
    assert found.sources == ["nvml"] and found.driver == "550.54.15"
    assert [(g.id, g.model, g.devices, g.pci_bus_id) for g in found.gpus] == [
        ("nvidia:0", "Tesla T4", ["/dev/nvidia1"], "0000:3b:00.0"), ("nvidia:1", "Tesla T4", ["/dev/nvidia0"], "0000:3c:00.0")]


def test_hwdetect_writes_the_inventory(tmp_path):
    out = tmp_path / "run" / "hardware.json"
    name = "amd-mi250"
    result = CliRunner().invoke(cli, ["hwdetect", "--root", str(FIXTURES / name / "root"),
                                      "--tools", str(FIXTURES / name / "tools"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "4x AMD INSTINCT MI250" in result.output
    assert read_inventory(out).gpus[0].id == "amd:0"
    assert json.loads(out.read_text())["version"] == 1


def test_agent_inventory_sources(tmp_path, monkeypatch):
    for var in ("REPX_HARDWARE_FILE", "REPX_HARDWARE_ROOT", "REPX_HARDWARE_TOOLS"):
        monkeypatch.delenv(var, raising=False)
    assert len(agent_inventory(root=FIXTURES / "intel-laptop" / "root").gpus) == 1
    monkeypatch.setenv("REPX_HARDWARE_ROOT", str(FIXTURES / "nvidia-dgx-a100" / "root"))
    assert len(agent_inventory(root=FIXTURES / "intel-laptop" / "root").gpus) == 8  # the environment wins
    monkeypatch.setenv("REPX_HARDWARE_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="missing.json: cannot read"):
        agent_inventory()
    (tmp_path / "bad.json").write_text('{"version": 1}')
    monkeypatch.setenv("REPX_HARDWARE_FILE", str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="bad.json: host: Field required"):
        agent_inventory()


@pytest.mark.parametrize(("resources", "count", "optional"), [
    ({}, 0, False),
    ({"gpus": 2}, 2, False),
    ({"gpus": 1, "gpu": "optional"}, 1, True),
    ({"gpu": "optional"}, 1, True),
    ({"sbatch_opts": ["--gres=gpu:4"]}, 4, False),
    ({"sbatch_opts": ["--gres=gpu:a100:2"]}, 2, False),
    ({"sbatch_opts": ["--gres", "gpu:3", "--exclusive"]}, 3, False),
    ({"sbatch_opts": ["--gres=gpu"]}, 1, False),
    ({"sbatch_opts": ["--gres=shard:2,gpu:h100:8"]}, 8, False),
    ({"sbatch_opts": ["--gpus=v100:2"]}, 2, False),
    ({"sbatch_opts": ["--gres=gpu:2"], "gpus": 1}, 1, False),  # an explicit count wins
    ({"sbatch_opts": ["--mem=4G"]}, 0, False),
])
def test_gpu_request(resources, count, optional):
    request = gpu_request(resources)
    assert (request.count, request.optional) == (count, optional)


def test_resources_toml_and_hints_carry_gpus():
    resources = Resources.model_validate({"defaults": {"mem": "1G"},
                                          "rules": [{"job_id_glob": "*train*", "sbatch_opts": ["--gres=gpu:2"]},
                                                    {"job_id_glob": "*infer*", "gpus": 1, "gpu": "optional"}]})
    assert gpu_request(resources.for_job("0a-train-1.0", {}, None)).count == 2
    assert gpu_request(resources.for_job("0a-infer-1.0", {}, None)) == gpu_request({"gpus": 1, "gpu": "optional"})
    assert gpu_request(resources.for_job("0a-other-1.0", {"gpus": 3}, None)).count == 3
    with pytest.raises(ValueError, match="gpu"):
        Resources.model_validate({"defaults": {"gpu": "sometimes"}})


def test_grant_devices_and_device_allow(tmp_path):
    inv = fixture("nvidia-dgx-a100")
    grant = grant_for(inv.model_dump(mode="json"), ["nvidia:3", "nvidia:5"])
    assert grant.nodes == ["/dev/nvidia3", "/dev/nvidia5", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    assert device_allow(grant) == [(n, "rw") for n in grant.nodes]
    assert device_allow(None) == [] and device_allow(grant_for(inv, [])) == []
    assert grant.visible_env() == {"CUDA_VISIBLE_DEVICES": "3,5", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    # An attempt without GPUs on a GPU node must not see them.
    assert grant_for(inv, []).visible_env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}
    amd = grant_for(fixture("amd-mi250"), ["amd:1"])
    assert amd.nodes == ["/dev/dri/renderD128", "/dev/dri/card1", "/dev/kfd"]
    assert amd.visible_env() == {"ROCR_VISIBLE_DEVICES": "1"}
    assert grant_for(fixture("intel-laptop"), ["intel:0"]).visible_env() == {"ZE_AFFINITY_MASK": "0"}
    with pytest.raises(DevicesMissing, match="nvidia:9 was assigned but this agent does not have it"):
        grant_for(inv, ["nvidia:9"])


def test_a_gpu_that_disappeared_is_named(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "nvidia-dgx-a100" / "root", root)
    inv = detect(root, FIXTURES / "nvidia-dgx-a100" / "tools")
    grant = grant_for(inv, ["nvidia:0", "nvidia:1"])
    check_present(grant, root)
    manifest = root / "dev.manifest"
    manifest.write_text(manifest.read_text().replace("/dev/nvidia1\n", ""))
    with pytest.raises(DevicesMissing) as caught:
        check_present(grant, root)
    assert caught.value.gpus == ["nvidia:1"]
    assert str(caught.value).startswith("GPU nvidia:1 (NVIDIA A100-SXM4-80GB, 0000:0f:00.0) disappeared: /dev/nvidia1 missing")
    registered = {"cpus": 256, "hardware": inv.model_dump(mode="json")}
    assert [g["id"] for g in without_gpus(registered, ["nvidia:1"])["hardware"]["gpus"]] == [f"nvidia:{i}" for i in range(8) if i != 1]


def capacity(gpus: dict[str, int], slots: int = 8, held: set[str] = frozenset()) -> Capacity:
    free = {vendor: [f"{vendor}:{i}" for i in range(n) if f"{vendor}:{i}" not in held] for vendor, n in gpus.items()}
    return Capacity(slots, 64, 2**40, 64, 2**40, free, max(gpus.values(), default=0))


def test_scheduler_assigns_devices_without_oversubscribing():
    room = {"dgx": capacity({"nvidia": 8}), "amd": capacity({"amd": 4}, slots=4), "cpu": capacity({}, slots=16)}
    assert Scheduler._choose(room, 1, 0, 3) == ("dgx", ["nvidia:0", "nvidia:1", "nvidia:2"])
    assert Scheduler._choose(room, 1, 0, 4) == ("dgx", ["nvidia:3", "nvidia:4", "nvidia:5", "nvidia:6"])
    assert Scheduler._choose(room, 1, 0, 2) == ("amd", ["amd:0", "amd:1"])  # only one NVIDIA GPU left
    assert Scheduler._choose(room, 1, 0, 1) == ("dgx", ["nvidia:7"])
    assert Scheduler._choose(room, 1, 0, 3) == (None, [])  # busy, not impossible
    assert unschedulable(room, 3) is None
    assert Scheduler._choose(room, 1, 0, 3, optional=True) == ("cpu", [])
    assert Scheduler._choose(room, 1, 0) == ("cpu", [])


def test_unschedulable_reasons():
    assert unschedulable({"a": capacity({"nvidia": 1}), "b": capacity({})}, 2) == "needs 2 GPUs; largest agent has 1"
    assert unschedulable({"b": capacity({})}, 1) == "needs 1 GPU; no agent has GPUs"
    assert unschedulable({}, 2) == "needs 2 GPUs; no agent has GPUs"
    # One job's GPUs come from one vendor: 4 NVIDIA + 4 AMD on one agent fit 4, not 8.
    assert unschedulable({"mixed": capacity({"nvidia": 4, "amd": 4})}, 8) == "needs 8 GPUs; largest agent has 4"


def test_repxctl_hardware_renders_an_inventory(capsys):
    from repxctl.hardware import render

    inv = fixture("amd-mi250").model_dump(mode="json")
    render([{"agent": "mi250", "host": "mi250-node07", "state": "active", "hardware": inv, "gpus_in_use": ["amd:1"]},
            {"agent": "old", "host": "h", "state": "lost", "hardware": None}])
    out = capsys.readouterr().out
    assert "mi250 (mi250-node07, active)" in out and "cgroup limit 448.0 GiB" in out
    assert "amd:0     AMD INSTINCT MI250 (MCM) OAM AC MBA  64.0 GiB  0000:2f:00.0  /dev/dri/renderD129 /dev/dri/card2  [free]" in out
    assert "amd:1" in out and "[in use]" in out and "driver  amd 6.2.4" in out and "no inventory" in out
