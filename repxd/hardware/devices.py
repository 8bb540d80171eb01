"""The devices an attempt was assigned: which nodes, variables and driver files it gets, what
systemd must allow, and whether they are still there when it starts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RepxError
from .model import VISIBLE_VARIABLE, Gpu, Inventory
from .root import Root


class DevicesMissing(RepxError):
    """An assigned GPU's device node is gone (unplugged, driver reset, fell off the bus): the
    attempt fails as an infrastructure error and is placed again without that GPU."""

    exit_code = 1

    def __init__(self, message: str, gpus: list[str]) -> None:
        super().__init__(message)
        self.gpus = gpus


@dataclass(frozen=True)
class DeviceGrant:
    """GPUs of one attempt and everything needed to use them."""

    gpus: tuple[Gpu, ...] = ()
    shared: tuple[str, ...] = ()  # nodes of the granted vendors every job needs (/dev/nvidiactl, /dev/kfd)
    driver_paths: tuple[str, ...] = ()
    cdi: tuple[str, ...] = ()
    hidden: tuple[str, ...] = field(default=())  # vendors on the agent whose GPUs this attempt must not use

    @property
    def nodes(self) -> list[str]:
        return [node for gpu in self.gpus for node in gpu.devices] + list(self.shared)

    def of(self, vendor: str) -> list[Gpu]:
        return [gpu for gpu in self.gpus if gpu.vendor == vendor]

    def visible_env(self) -> dict[str, str]:
        """Native runs see every GPU of the host; these variables narrow them to the assigned
        ones (vendor ordinals; CUDA counted in PCI order like nvidia-smi)."""
        env = {}
        for vendor, variable in VISIBLE_VARIABLE.items():
            gpus = self.of(vendor)
            if gpus:
                env[variable] = ",".join(str(gpu.index) for gpu in gpus)
        if self.of("nvidia") or "nvidia" in self.hidden:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env.setdefault("CUDA_VISIBLE_DEVICES", "")  # CUDA: an empty list means no GPU
        return env


NO_DEVICES = DeviceGrant()


def tightest_vendor(free: dict[str, list[str]], count: int) -> str | None:
    """The vendor whose free GPUs fit `count` most tightly (one job's GPUs share a vendor), so
    larger groups stay whole for larger jobs; None when none fits."""
    fitting = [(len(ids), vendor) for vendor, ids in free.items() if len(ids) >= count]
    return min(fitting)[1] if fitting else None


def grant_for(inventory: Inventory | dict, gpu_ids: Iterable[str]) -> DeviceGrant:
    """The grant of `gpu_ids` on an agent with `inventory` (its registered hardware)."""
    if isinstance(inventory, dict):
        inventory = Inventory.model_validate(inventory)
    gpus = []
    for gpu_id in gpu_ids:
        gpu = inventory.gpu(gpu_id)
        if gpu is None:
            raise DevicesMissing(f"GPU {gpu_id} was assigned but this agent does not have it (inventory changed)", [gpu_id])
        gpus.append(gpu)
    vendors = {gpu.vendor for gpu in gpus}
    shared = tuple(node for vendor in sorted(vendors) for node in inventory.shared_devices.get(vendor, []))
    hidden = tuple(sorted({gpu.vendor for gpu in inventory.gpus} - vendors))
    return DeviceGrant(tuple(gpus), shared, tuple(inventory.driver_paths) if gpus else (),
                       tuple(inventory.cdi) if gpus else (), hidden)


def check_present(grant: DeviceGrant, root: Path | str = "/") -> None:
    """Raise DevicesMissing naming each assigned GPU whose nodes are gone under `root`."""
    r = Root(root)
    gone, lines = [], []
    for gpu in grant.gpus:
        missing = [node for node in gpu.devices if not r.device_exists(node)]
        if missing:
            gone.append(gpu.id)
            where = f", {gpu.pci_bus_id}" if gpu.pci_bus_id else ""
            lines.append(f"GPU {gpu.id} ({gpu.model}{where}) disappeared: {', '.join(missing)} missing")
    shared = [node for node in grant.shared if not r.device_exists(node)]
    if shared and grant.gpus:
        gone = gone or [gpu.id for gpu in grant.gpus]
        lines.append(f"driver device {', '.join(shared)} missing")
    if gone:
        raise DevicesMissing("; ".join(lines) + "; the attempt is placed again without it", gone)


def device_allow(grant: DeviceGrant | None) -> list[tuple[str, str]]:
    """systemd `DeviceAllow=` entries for a transient unit running an attempt with `grant`: read
    and write access to each assigned GPU's nodes and its vendor's shared nodes, nothing else."""
    if grant is None:
        return []
    return [(node, "rw") for node in dict.fromkeys(grant.nodes)]


def without_gpus(inventory: dict, gpu_ids: Iterable[str]) -> dict:
    """An agent's registration inventory minus GPUs found gone."""
    gone = set(gpu_ids)
    hardware = dict(inventory.get("hardware") or {})
    hardware["gpus"] = [gpu for gpu in hardware.get("gpus", []) if gpu["id"] not in gone]
    return {**inventory, "hardware": hardware}
