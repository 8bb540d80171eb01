"""GPUs of this machine for the embedded engine: jobs that ask for GPUs get specific devices of
one vendor, never shared while they run. Jobs that ask for none are left as they are (they see
what the host shows them, as upstream's local runner does)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from ..hardware import NO_DEVICES, GpuRequest, Inventory, grant_for, tightest_vendor


class GpuUnavailable(Exception):
    """The job needs more GPUs of one kind than this machine has: it can never start here."""


class GpuPool:
    def __init__(self, load_inventory: Callable[[], Inventory]) -> None:
        self._load = load_inventory  # detection runs only once a job asks for GPUs
        self._inventory: Inventory | None = None
        self._free: dict[str, list[str]] = {}
        self._released = asyncio.Condition()

    def _ensure(self) -> Inventory:
        if self._inventory is None:
            self._inventory = self._load()
            for gpu in self._inventory.gpus:
                self._free.setdefault(gpu.vendor, []).append(gpu.id)
        return self._inventory

    @asynccontextmanager
    async def take(self, request: GpuRequest):
        """Yields the grant for `request`, waiting while the GPUs are busy. An optional request
        runs on the CPU (no grant) when none is free; one that can never fit raises GpuUnavailable."""
        if request.count == 0:
            yield NO_DEVICES
            return
        inventory = self._ensure()
        largest = max((sum(1 for g in inventory.gpus if g.vendor == v) for v in self._free), default=0)
        if request.count > largest and not request.optional:
            have = f"this machine has {largest}" if largest else "this machine has no GPU"
            raise GpuUnavailable(f"needs {request.count} GPU{'s' if request.count > 1 else ''}; {have}")
        async with self._released:
            vendor = tightest_vendor(self._free, request.count)
            if vendor is None and not request.optional:
                vendor = await self._released.wait_for(lambda: tightest_vendor(self._free, request.count))
            ids = self._free[vendor][:request.count] if vendor else []
            if vendor:
                del self._free[vendor][:request.count]
        try:
            yield grant_for(inventory, ids) if ids else NO_DEVICES
        finally:
            if vendor:
                async with self._released:
                    self._free[vendor].extend(ids)
                    self._free[vendor].sort(key=lambda gpu_id: int(gpu_id.rsplit(":", 1)[1]))
                    self._released.notify_all()

