"""CPU and memory: /proc/cpuinfo, the affinity mask, MemTotal and the cgroup's memory limit."""

from __future__ import annotations

import os
import socket

from .model import Cpu, Memory
from .root import Root

UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2^63


def cpu(root: Root) -> Cpu:
    text = root.read("/proc/cpuinfo") or ""
    model, flags, logical = "unknown", [], 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key in ("model name", "Model", "cpu model") and model == "unknown":
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = sorted(value.split())
    logical = max(1, logical)
    return Cpu(model=model, cores=_allowed_cpus(root) or logical, logical=logical, flags=flags)


def _allowed_cpus(root: Root) -> int | None:
    """The CPUs this process may use: its affinity on the live system, else the recorded
    `Cpus_allowed_list` of /proc/self/status."""
    if root.live:
        return len(os.sched_getaffinity(0))
    for line in (root.read("/proc/self/status") or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return count_cpu_list(line.split(":", 1)[1])
    return None


def count_cpu_list(text: str) -> int:
    """'0-3,8,10-11' -> 7."""
    total = 0
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def memory(root: Root) -> Memory:
    total = 0
    for line in (root.read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            break
    if not total and root.live:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory_limit(root)
    usable = min(total, limit) if limit is not None else total
    return Memory(total=total, cgroup_limit=limit, usable=usable)


def cgroup_memory_limit(root: Root) -> int | None:
    """The tightest memory limit of our cgroup and its ancestors (v2 `memory.max`, v1
    `memory.limit_in_bytes`); None when unlimited."""
    limits = []
    for line in (root.read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":
            limits += _walk(root, "/sys/fs/cgroup", path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _walk(root, "/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    real = [v for v in limits if v < UNLIMITED]
    return min(real) if real else None


def _walk(root: Root, mount: str, path: str, name: str) -> list[int]:
    values = []
    parts = [p for p in path.strip().split("/") if p]
    for depth in range(len(parts), -1, -1):
        text = root.read("/".join([mount, *parts[:depth], name]))
        if text is None:
            continue
        text = text.strip()
        if text.isdigit():
            values.append(int(text))
    return values


def hostname(root: Root) -> str:
    if root.live:
        return socket.gethostname()
    for path in ("/etc/hostname", "/proc/sys/kernel/hostname"):
        text = (root.read(path) or "").strip()
        if text:
            return text
    return root.prefix.name or "unknown"
