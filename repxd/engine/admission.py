"""CPU, memory and slot admission for jobs on one machine."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass


class AdmissionClosed(Exception):
    """No new launches: the run is stopping (a failure without --continue-on-failure, or a cancel)."""


@dataclass
class Request:
    cpus: int
    mem: int


class Admission:
    """Grants (cpus, mem) out of fixed totals with at most `slots` holders at once. A request larger
    than the machine is clamped to the totals, so it runs alone rather than never."""

    def __init__(self, slots: int, cpus: int, mem: int) -> None:
        self.slots, self.cpus, self.mem = slots, cpus, mem
        self._free_slots, self._free_cpus, self._free_mem = slots, cpus, mem
        self._waiters: list[tuple[Request, asyncio.Future[None]]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for _req, fut in self._waiters:
            if not fut.done():
                fut.set_exception(AdmissionClosed())
        self._waiters.clear()

    def _fits(self, req: Request) -> bool:
        return self._free_slots >= 1 and self._free_cpus >= req.cpus and self._free_mem >= req.mem

    def _take(self, req: Request) -> None:
        self._free_slots -= 1
        self._free_cpus -= req.cpus
        self._free_mem -= req.mem

    def _wake(self) -> None:
        if self._free_slots < 1:
            return  # nothing fits without a slot; whoever holds one passes here again on release
        still = []
        for i, (req, fut) in enumerate(self._waiters):
            if fut.done():
                continue
            if self._fits(req):
                self._take(req)
                fut.set_result(None)
                if self._free_slots < 1:
                    # The rest keep their order untouched: no walk over every waiter per release
                    # (a wide DAG has thousands), which made each job's cost grow with the width.
                    still.extend(self._waiters[i + 1:])
                    break
            else:
                still.append((req, fut))
        self._waiters = still

    @asynccontextmanager
    async def hold(self, cpus: int = 1, mem: int = 0):
        if self.closed:
            raise AdmissionClosed()
        req = Request(max(0, min(cpus, self.cpus)), max(0, min(mem, self.mem)))
        if self._fits(req) and not self._waiters:
            self._take(req)
        else:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((req, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._release(req)
                raise
        try:
            yield
        finally:
            self._release(req)

    def _release(self, req: Request) -> None:
        self._free_slots += 1
        self._free_cpus += req.cpus
        self._free_mem += req.mem
        self._wake()
