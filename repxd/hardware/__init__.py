"""Hardware: GPU, CPU and memory detection (every reader takes a root prefix), the inventory
model, and the devices an attempt is granted."""

from .detect import agent_inventory, detect, hardware_root, read_inventory, write_inventory
from .devices import (
    NO_DEVICES,
    DeviceGrant,
    DevicesMissing,
    check_present,
    device_allow,
    grant_for,
    tightest_vendor,
    without_gpus,
)
from .model import Cpu, Gpu, Inventory, Memory
from .request import GpuRequest, gpu_request

__all__ = [
    "NO_DEVICES", "Cpu", "DeviceGrant", "DevicesMissing", "Gpu", "GpuRequest", "Inventory", "Memory",
    "agent_inventory", "check_present", "detect", "device_allow", "gpu_request", "grant_for",
    "hardware_root", "read_inventory", "tightest_vendor", "without_gpus", "write_inventory",
]
