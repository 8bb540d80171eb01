"""The hardware inventory: what `repxd hwdetect` writes and what an agent registers with.

Pydantic at the boundary: the JSON file, the registration body and the API all carry this shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Vendor = Literal["nvidia", "amd", "intel"]
# The variable each vendor's runtime reads to restrict the devices a process sees.
VISIBLE_VARIABLE: dict[str, str] = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES",
                                    "intel": "ZE_AFFINITY_MASK"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gpu(_Model):
    id: str  # "<vendor>:<index>": what the scheduler assigns and attempts record
    vendor: Vendor
    index: int = Field(ge=0)  # the vendor runtime's ordinal (CUDA in PCI order, ROCr agent order, Level Zero)
    model: str
    uuid: str | None = None
    pci_bus_id: str | None = None  # dddd:bb:dd.f, lower case
    memory: int | None = None  # bytes of device memory
    devices: list[str] = []  # device nodes only this GPU uses


class Cpu(_Model):
    model: str
    cores: int = Field(ge=1)  # CPUs this process may run on (affinity)
    logical: int = Field(ge=1)  # CPUs the kernel lists
    flags: list[str] = []


class Memory(_Model):
    total: int = Field(ge=0)  # MemTotal
    cgroup_limit: int | None = None  # the tightest memory.max (v2) / memory.limit_in_bytes (v1) above us
    usable: int = Field(ge=0)  # min(total, cgroup_limit)


class Inventory(_Model):
    version: Literal[1] = 1
    host: str
    root: str = "/"  # the prefix it was read from ("/" on a live system)
    detected_at: float
    cpu: Cpu
    memory: Memory
    gpus: list[Gpu] = []
    shared_devices: dict[str, list[str]] = {}  # vendor -> nodes every job using its GPUs needs
    drivers: dict[str, str] = {}  # vendor -> driver version
    driver_paths: list[str] = []  # /run/opengl-driver on NixOS, else the driver's user-space libraries
    cdi: list[str] = []  # CDI device kinds with a spec on this host (nvidia.com/gpu, amd.com/gpu)
    sources: list[str] = []  # what was read: proc, sysfs, nvidia-smi, nvml, rocm-smi, kfd

    def gpu(self, gpu_id: str) -> Gpu | None:
        return next((g for g in self.gpus if g.id == gpu_id), None)

    def summary(self) -> str:
        gib = self.memory.usable / 2**30
        text = f"{self.host}: {self.cpu.cores} cores ({self.cpu.model}), {gib:.1f} GiB"
        if not self.gpus:
            return text + ", no GPUs"
        by_model: dict[str, int] = {}
        for gpu in self.gpus:
            by_model[gpu.model] = by_model.get(gpu.model, 0) + 1
        return text + ", " + ", ".join(f"{n}x {model}" for model, n in by_model.items())
