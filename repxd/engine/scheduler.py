"""The scheduler role: expires lost agents, promotes nothing itself (transitions do), and places
placeable jobs on agents with room. All state is in the store; a restarted scheduler resumes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..exec.layout import SUCCESS, OutputLayout
from ..observe import notify
from ..observe.metrics import SchedulerMetrics
from ..service.settings import SchedulerSettings
from ..store import queries as q
from ..store.db import AsyncDatabase

log = logging.getLogger("repx.scheduler")
PLACEMENT_BATCH = 2000


class Wakeups:
    """In-process wake-ups between roles sharing one AsyncDatabase (`repxd all`): the API sets
    `schedule` when jobs may have become placeable or room was freed, the scheduler pulses `placed`
    for claim long-polls. Roles in separate processes are never woken and poll as before."""

    def __init__(self) -> None:
        self.schedule = asyncio.Event()
        self.placed = asyncio.Event()

    def pulse_placed(self) -> None:
        self.placed.set()  # wakes every current waiter
        self.placed.clear()


_WAKEUPS: weakref.WeakKeyDictionary[AsyncDatabase, Wakeups] = weakref.WeakKeyDictionary()


def wakeups(database: AsyncDatabase) -> Wakeups:
    if database not in _WAKEUPS:
        _WAKEUPS[database] = Wakeups()
    return _WAKEUPS[database]


@dataclass
class Capacity:
    """What an agent has free, and its totals: a job larger than the agent is clamped to the
    totals, so it is placed when the agent is idle and runs alone."""

    slots: int
    cpus: int
    mem: int
    total_cpus: int
    total_mem: int

    def fits(self, cpus: int, mem: int) -> bool:
        return (self.slots >= 1 and self.cpus >= min(cpus, self.total_cpus)
                and self.mem >= min(mem, self.total_mem))

    def take(self, cpus: int, mem: int) -> None:
        self.slots -= 1
        self.cpus -= cpus
        self.mem -= mem


class Scheduler:
    def __init__(self, settings: SchedulerSettings, database: AsyncDatabase, metrics: SchedulerMetrics | None = None) -> None:
        self.settings = settings
        self.db = database
        self.metrics = metrics or SchedulerMetrics()
        self.policy = q.RetryPolicy(settings.max_lost, settings.job_retries, settings.backoff)
        self.last_tick = 0.0
        self.started = time.time()
        self._counts_at = 0.0
        self.wakeups = wakeups(database)

    async def _capacities(self, now: float) -> dict[str, Capacity]:
        agents = await self.db.run(q.list_agents, self.db.db)
        load = await self.db.run(q.agent_load, self.db.db)
        room = {}
        for agent in agents:
            if agent.state != "active" or agent.lease_expires < now:
                continue
            inv = agent.inventory
            n, cpus, mem = load.get(agent.id, (0, 0, 0))
            total_cpus, total_mem = int(inv.get("cpus", 1)), int(inv.get("mem", 0))
            room[agent.id] = Capacity(int(inv.get("slots", 1)) - n, total_cpus - cpus, total_mem - mem, total_cpus, total_mem)
        return room

    async def tick(self) -> int:
        """One pass; returns the number of attempts placed."""
        started = time.perf_counter()
        now = time.time()
        lost = await self.db.run(q.expire_agents, self.db.db, now, self.policy)
        if lost:
            self.metrics.lost.inc(lost)
            log.warning("%d attempts lost with their agents; requeued where the policy allows", lost)
        pending = await self.db.run(q.placeable, self.db.db, now, PLACEMENT_BATCH)
        self.metrics.ready.set(len(pending))
        placed = 0
        if pending:
            placed = await self._place(pending, now)
        if now - self._counts_at > 1.0:
            self._counts_at = now
            for state, count in (await self.db.run(q.job_state_counts, self.db.db)).items():
                self.metrics.jobs.labels(state).set(count)
            await self.db.run(q.touch_role, self.db.db, "scheduler", socket.gethostname(), os.getpid(), self.started)
        self.last_tick = time.monotonic()
        self.metrics.loop.observe(time.perf_counter() - started)
        return placed

    async def _place(self, pending, now: float) -> int:
        room = await self._capacities(now)
        done = await asyncio.to_thread(_done_on_disk, [(r["base_path"], r["job_id"]) for r in pending])
        decisions = []
        for row in pending:
            agent = None
            if (row["base_path"], row["job_id"]) not in done:
                agent = self._choose(room, row["cpus"], row["mem"])
            decisions.append((row["run_id"], row["job_id"], agent))
        created = await self.db.run(q.place, self.db.db, decisions, done)
        if created:
            self.wakeups.pulse_placed()
            self.metrics.placed.inc(created)
            for row, (_r, _j, agent) in zip(pending, decisions, strict=True):
                if agent is not None and row["ready_at"]:
                    self.metrics.dispatch.observe(max(0.0, now - row["ready_at"]))
        return created

    @staticmethod
    def _choose(room: dict[str, Capacity], cpus: int, mem: int) -> str | None:
        best = None
        for agent_id, cap in room.items():
            if cap.fits(cpus, mem) and (best is None or cap.slots > room[best].slots):
                best = agent_id
        if best is not None:
            room[best].take(cpus, mem)
        return best

    def healthy(self) -> bool:
        return time.monotonic() - self.last_tick < max(10.0, 20 * self.settings.poll_interval)

    async def run(self) -> None:
        await self.tick()
        notify.ready("scheduling")
        log.info("scheduler ready (poll every %.2fs, lease %.0fs)", self.settings.poll_interval, self.settings.lease_seconds)
        watchdog = asyncio.create_task(notify.watchdog_loop(self.healthy))
        try:
            while True:
                self.wakeups.schedule.clear()
                placed = await self.tick()
                notify.status(f"scheduling; placed {placed} in the last pass")
                if not placed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeups.schedule.wait(), self.settings.poll_interval)
        finally:
            watchdog.cancel()


def _done_on_disk(executions: list[tuple[str, str]]) -> set[tuple[str, str]]:
    done = set()
    for base, job_id in set(executions):
        if (OutputLayout(Path(base)).repx_dir(job_id) / SUCCESS).exists():
            done.add((base, job_id))
    return done
