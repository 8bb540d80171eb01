"""The scheduler role: expires lost agents, promotes nothing itself (transitions do), and places
placeable jobs on agents with room. All state is in the store; a restarted scheduler resumes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..exec.layout import SUCCESS, OutputLayout
from ..hardware import tightest_vendor
from ..observe import notify
from ..observe.metrics import SchedulerMetrics
from ..service.daemon_config import SchedulerSettings
from ..store import queries as q
from ..store import reads
from ..store.db import AsyncDatabase, Database, StoreFull
from .wakeups import wakeups

log = logging.getLogger("repx.scheduler")
PLACEMENT_BATCH = 2000


@dataclass
class Capacity:
    """What an agent has free, and its totals: a job larger than the agent is clamped to the
    totals, so it is placed when the agent is idle and runs alone."""

    slots: int
    cpus: int
    mem: int
    total_cpus: int
    total_mem: int
    gpus: dict[str, list[str]] = field(default_factory=dict)  # vendor -> free GPU ids, in index order
    total_gpus: int = 0  # the largest vendor group: what one job can ever get here

    def fits(self, cpus: int, mem: int, gpus: int = 0) -> bool:
        return (self.slots >= 1 and self.cpus >= min(cpus, self.total_cpus)
                and self.mem >= min(mem, self.total_mem) and (gpus == 0 or tightest_vendor(self.gpus, gpus) is not None))

    def take(self, cpus: int, mem: int, gpus: int = 0) -> list[str]:
        self.slots -= 1
        self.cpus -= cpus
        self.mem -= mem
        if not gpus:
            return []
        vendor = tightest_vendor(self.gpus, gpus)
        taken, self.gpus[vendor] = self.gpus[vendor][:gpus], self.gpus[vendor][gpus:]
        return taken

    @property
    def free_gpus(self) -> int:
        return sum(len(free) for free in self.gpus.values())


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

    @staticmethod
    def _capacities(survey: Survey, now: float) -> tuple[dict[str, Capacity], dict[str, dict[str, int]]]:
        """Each active agent's room on its own machine, and its free slots per cluster target
        (jobs it hands to SLURM): target -> agent -> slots."""
        load, held = survey.load, survey.held
        room, clusters = {}, {}
        for agent in survey.agents:
            if agent.state != "active" or agent.lease_expires < now:
                continue
            inv = agent.inventory
            own = inv.get("clusters") or {}
            for target, cluster in own.items():
                used = load.get((agent.id, target), (0, 0, 0))[0]
                clusters.setdefault(target, {})[agent.id] = int(cluster.get("slots", 0)) - used
            n = cpus = mem = 0
            for (agent_id, target), (tn, tc, tm) in load.items():
                if agent_id == agent.id and target not in own:
                    n, cpus, mem = n + tn, cpus + tc, mem + tm
            total_cpus, total_mem = int(inv.get("cpus", 1)), int(inv.get("mem", 0))
            groups: dict[str, list[tuple[int, str]]] = {}
            for gpu in (inv.get("hardware") or {}).get("gpus", []):
                groups.setdefault(gpu["vendor"], []).append((gpu["index"], gpu["id"]))
            busy = held.get(agent.id, set())
            free = {vendor: [gid for _i, gid in sorted(ids) if gid not in busy] for vendor, ids in groups.items()}
            room[agent.id] = Capacity(int(inv.get("slots", 1)) - n, total_cpus - cpus, total_mem - mem, total_cpus, total_mem,
                                      free, max((len(ids) for ids in groups.values()), default=0))
        return room, clusters

    async def tick(self) -> int:
        """One pass; returns the number of jobs placed or settled (0: nothing to do until woken)."""
        started = time.perf_counter()
        now = time.time()
        # Heartbeats cannot be recorded while the store's disk is full: no lease lapses then, and
        # leases get one more term after it recovers, so agents that kept running are not lost.
        store = self.db.db
        expire = store.full_since is None and now - store.recovered_at > self.settings.lease_seconds
        survey, placed, settled, waits = await self.db.run(self._pass, store, now, expire)
        if survey.lost:
            self.metrics.lost.inc(survey.lost)
            log.warning("%d attempts lost with their agents; requeued where the policy allows", survey.lost)
        self.metrics.ready.set(len(survey.pending))
        if placed:
            self.wakeups.pulse_placed()
            self.metrics.placed.inc(placed)
            for wait in waits:
                self.metrics.dispatch.observe(wait)
        if now - self._counts_at > 1.0:
            self._counts_at = now
            for state, count in (await self.db.run(reads.job_state_counts, self.db.db)).items():
                self.metrics.jobs.labels(state).set(count)
            await self.db.run(q.touch_role, self.db.db, "scheduler", socket.gethostname(), os.getpid(), self.started)
        self.last_tick = time.monotonic()
        self.metrics.loop.observe(time.perf_counter() - started)
        return placed + settled

    def _pass(self, store: Database, now: float, expire: bool) -> tuple[Survey, int, int, list[float]]:
        """Read, decide and place in one call on the store's thread (placing is pure computation
        between two store calls). Each hand-off to that thread waits its turn on a loop busy with
        the agent's jobs (1-2 ms under load in `repxd all`): with one per read, a pass took ~12 ms
        and the agent's slots stood idle waiting for placements. Returns what was read, the
        attempts created, the jobs settled from their SUCCESS markers, and how long each placed
        job had been ready.

        Only jobs that get room are looked at further (their marker on disk, another run's live
        attempt of the same job): a pass costs the room it fills, not the length of the queue,
        which in a wide sweep is thousands of jobs on every pass."""
        survey = _survey(store, now, self.policy, expire)
        if not survey.pending:
            return survey, 0, 0, []
        room, clusters = self._capacities(survey, now)
        decisions, settled, waits, reasons = [], [], [], []
        for row in survey.pending:
            cluster = clusters.get(row["target"])  # the cluster places it; an agent only submits it
            if cluster is not None:
                agent = max(cluster, key=cluster.__getitem__, default=None)
                has_room = agent is not None and cluster[agent] > 0
            else:
                has_room = any(cap.slots > 0 for cap in room.values())
            if has_room and _done_on_disk(row["base_path"], row["job_id"]):
                settled.append((row["run_id"], row["job_id"]))
                continue
            if not has_room:
                agent, devices = None, []
            elif cluster is not None:
                cluster[agent] -= 1
                devices = []
            else:
                agent, devices = self._choose(room, row["cpus"], row["mem"], row["gpus"], bool(row["gpu_optional"]))
            if agent is not None:
                decisions.append((row["run_id"], row["job_id"], agent, devices))
                waits.append(max(0.0, now - row["ready_at"]) if row["ready_at"] else None)
            elif row["gpus"]:
                why = None if row["gpu_optional"] else unschedulable(room, row["gpus"])
                current = row["reason"] if (row["reason"] or "").startswith(q.UNSCHEDULABLE) else None
                if (q.UNSCHEDULABLE + why if why else None) != current:
                    reasons.append((row["run_id"], row["job_id"], why))
        if reasons:
            q.set_unschedulable(store, reasons)
        created, settled_count = q.place(store, decisions, settled)
        return survey, created, settled_count, [w for w in waits if w is not None] if created else []

    @staticmethod
    def _choose(room: dict[str, Capacity], cpus: int, mem: int, gpus: int = 0,
                optional: bool = False) -> tuple[str | None, list[str]]:
        """The agent with the most free slots that fits, and the GPU ids assigned there. A job
        without GPUs prefers agents with no free GPU (keeping GPU nodes for GPU work); an
        optional-GPU job that finds none free runs without."""
        def preference(cap: Capacity) -> tuple:
            return (cap.slots,) if gpus else (cap.free_gpus == 0, cap.slots)

        best = None
        for agent_id, cap in room.items():
            if cap.fits(cpus, mem, gpus) and (best is None or preference(cap) > preference(room[best])):
                best = agent_id
        if best is None:
            if gpus and optional:
                return Scheduler._choose(room, cpus, mem)
            return None, []
        return best, room[best].take(cpus, mem, gpus)

    def healthy(self) -> bool:
        return time.monotonic() - self.last_tick < max(10.0, 20 * self.settings.poll_interval)

    async def run(self) -> None:
        with contextlib.suppress(StoreFull):  # a full disk at start: the loop below waits for space
            await self.tick()
        notify.ready("scheduling")
        log.info("scheduler ready (poll every %.2fs, lease %.0fs)", self.settings.poll_interval, self.settings.lease_seconds)
        watchdog = asyncio.create_task(notify.watchdog_loop(self.healthy))
        try:
            while True:
                self.wakeups.schedule.clear()
                try:
                    placed = await self.tick()
                except StoreFull:  # logged by the store; placing waits until space returns
                    await asyncio.sleep(max(1.0, self.settings.poll_interval))
                    continue
                notify.status(f"scheduling; placed {placed} in the last pass")
                if not placed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeups.schedule.wait(), self.settings.poll_interval)
        finally:
            watchdog.cancel()


def unschedulable(room: dict[str, Capacity], gpus: int) -> str | None:
    """Why no agent can ever run a job needing `gpus` GPUs; None when one could (it is busy)."""
    largest = max((cap.total_gpus for cap in room.values()), default=0)
    if largest >= gpus:
        return None
    if largest == 0:
        return f"needs {gpus} GPU{'s' if gpus > 1 else ''}; no agent has GPUs"
    return f"needs {gpus} GPUs; largest agent has {largest}"


@dataclass
class Survey:
    """What one pass reads from the store."""

    lost: int  # attempts lost with agents whose lease lapsed (requeued)
    pending: list  # placeable jobs, in placement order
    agents: list = field(default_factory=list)
    load: dict = field(default_factory=dict)  # q.agent_load
    held: dict = field(default_factory=dict)  # q.held_devices


def _survey(store: Database, now: float, policy: q.RetryPolicy, expire: bool) -> Survey:
    """Everything a pass reads from the store (see Scheduler._pass)."""
    lost = q.expire_agents(store, now, policy) if expire else 0
    pending = q.placeable(store, now, PLACEMENT_BATCH)
    if not pending:
        return Survey(lost, pending)
    return Survey(lost, pending, reads.list_agents(store), q.agent_load(store), q.held_devices(store))


def _done_on_disk(base_path: str, job_id: str) -> bool:
    return os.path.exists(os.path.join(OutputLayout(Path(base_path)).repx_dir(job_id), SUCCESS))
