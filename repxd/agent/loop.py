"""The agent: registers with its inventory, keeps its lease, claims attempts by long-poll and
runs them through the execution layer. Jobs run in their own sessions and outlive the agent;
a restarted agent adopts them (see exec.launcher) instead of starting them again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
import socket
import threading
import time
from pathlib import Path

from .. import errors, hardware
from ..api.client import ApiError, ApiUnavailable, AsyncApi
from ..engine.admission import Admission
from ..engine.embedded import resolve_target, scheduler_of
from ..exec.artifacts import place_jobs, place_lab, synced
from ..exec.execute import execute_job
from ..exec.job import JobContext, disk_full_reason
from ..exec.launcher import SubprocessLauncher, forget_exit
from ..exec.layout import OutputLayout
from ..exec.runtimes import choose_execution_type, make_runtime
from ..exec.systemd_unit import UnitStopped, choose_launcher
from ..observe import notify
from ..observe.metrics import AgentMetrics
from ..service.daemon_config import Settings
from ..service.submit import open_lab_cached
from ..targets.cluster import ClusterLauncher
from ..targets.commands import LocalCommands
from ..targets.schedulers import CLUSTER_SCHEDULERS, cluster_launcher
from ..user_config import parse_memory
from .identity import job_uid
from .reports import ReportSender

log = logging.getLogger("repx.agent")
RETRY_SECONDS = 0.5
CLAIM_MAX = 1000  # the API's bound on one claim
REPORT_CLAIM_WAIT = 0.02  # seconds a report's answer may wait for work placed in the slots it frees


def inventory(settings: Settings) -> dict:
    a = settings.agent
    hw = hardware.agent_inventory(a.hardware_file, a.hardware_root, a.hardware_tools)
    cpus = a.cpus or hw.cpu.cores
    mem = parse_memory(a.mem) if a.mem else hw.memory.usable
    return {"cpus": cpus, "mem": mem, "slots": a.slots or cpus, "hardware": hw.model_dump(mode="json"),
            "clusters": {name: {"slots": cluster_slots(settings, name)} for name in cluster_targets(settings)}}


def cluster_targets(settings: Settings) -> list[str]:
    """The daemon's targets whose jobs this agent hands to a cluster scheduler (SLURM) or to
    another host (SSH): their jobs take none of this machine's slots, cpus or memory."""
    config = settings.target_config()
    return sorted(name for name, target in config.targets.items()
                  if config.scheduler_of(target) in CLUSTER_SCHEDULERS or target.address)


def cluster_slots(settings: Settings, name: str) -> int:
    """Jobs at once on a target: an SSH host runs its local_concurrency (default: as many as this
    machine's CPUs, as an embedded run would); a cluster (an SSH host's SLURM too), agent.cluster_slots."""
    config = settings.target_config()
    target = config.targets[name]
    if target.address and config.scheduler_of(target) not in CLUSTER_SCHEDULERS:
        return (target.local.local_concurrency if target.local and target.local.local_concurrency
                else os.cpu_count() or 1)
    return settings.agent.cluster_slots


class Agent:
    def __init__(self, settings: Settings, api: AsyncApi, metrics: AgentMetrics | None = None) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics or AgentMetrics()
        self.id = settings.agent.id
        self.inventory = inventory(settings)
        self.running: dict[int, asyncio.Task] = {}
        self._slot_freed = asyncio.Event()
        self.state = "active"
        self.last_heartbeat = time.monotonic()
        self._labs: dict[tuple[str, str], object] = {}
        self._synced: set[tuple[str, str]] = set()
        self._runtimes: dict[tuple, object] = {}
        self._prepared: dict[tuple, tuple] = {}  # _context_key -> what _context returned for it
        self._context_lock = threading.Lock()
        self.launcher = SubprocessLauncher()
        self._cluster_launchers: dict[str, ClusterLauncher] = {}
        self._cluster_admission = Admission(1 << 30, 1 << 30, 1 << 62)  # the cluster admits its jobs
        self._ssh_targets: dict[str, object] = {}  # target name -> its SshTarget, connected
        self._ssh_labs: set[tuple[str, str]] = set()  # (target, Lab) whose artifacts the host has
        self._ssh_lock = asyncio.Lock()
        self._new_handles: dict[int, str] = {}  # sent with the next heartbeat
        self._reports = ReportSender(self._send_reports)
        # The scheduler admits work; this only bounds processes of scatter-gather fan-out.
        self.admission = Admission(max(1, self.inventory["slots"]), self.inventory["cpus"], self.inventory["mem"])

    async def _retrying(self, method: str, path: str, json=None, timeout: float | None = None):
        """Call the API until it answers: it may be restarting."""
        delay = RETRY_SECONDS
        while True:
            try:
                return await self.api.call(method, path, json, timeout)
            except (ApiUnavailable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                (log.warning if delay == RETRY_SECONDS else log.debug)("API unavailable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def register(self) -> list[int]:
        reply = await self._retrying("POST", "/v1/agents", {"id": self.id, "host": socket.gethostname(),
                                                            "inventory": self.inventory, "labels": self.settings.agent.labels})
        self.state = reply["agent"]["state"]
        self.last_heartbeat = time.monotonic()
        return reply["adopt"]

    async def run(self) -> None:
        self.launcher = await choose_launcher(self.settings.agent.launcher)
        if self.settings.agent.allow_jobs_as_daemon_user:
            log.warning("agent.allow_jobs_as_daemon_user is set: jobs may run as %s, with the daemon's powers",
                        getpass.getuser())
        for attempt_id in await self.register():
            await self._adopt(attempt_id)
        notify.ready(f"agent {self.id}: {self.inventory['slots']} slots")
        inv = self.inventory
        log.info("agent %s ready: %d slots, %d CPUs, %d MiB, %d GPUs; jobs run as %s", self.id, inv["slots"], inv["cpus"],
                 inv["mem"] >> 20, len(inv["hardware"].get("gpus", [])),
                 "systemd units" if self.launcher.name == "systemd" else "subprocesses")
        await asyncio.gather(self._heartbeats(), self._claims(), notify.watchdog_loop(self.healthy))

    async def _adopt(self, attempt_id: int) -> None:
        """Run an attempt the store says is ours: after a restart, or when a claim's reply was lost.
        If its process still runs, the launcher's guard waits for it instead of starting another."""
        if attempt_id in self.running:
            return
        details = await self._retrying("GET", f"/v1/attempts/{attempt_id}")
        if attempt_id in self.running or details["state"] not in ("running", "cancelling"):
            return
        log.info("re-attaching attempt %s", attempt_id, extra={"job_id": details["job"], "run_id": details["run"]})
        self._start(details)

    def healthy(self) -> bool:
        return time.monotonic() - self.last_heartbeat < 3 * self.settings.scheduler.lease_seconds

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.agent.heartbeat_interval)
            try:
                handles = dict(self._new_handles)
                reply = await self.api.call("POST", f"/v1/agents/{self.id}/heartbeat",
                                            {"running": list(self.running), "handles": handles})
            except ApiError as exc:
                if exc.status == 404:
                    await self.register()
                continue
            except ApiUnavailable:
                self.metrics.heartbeat_age.set(time.monotonic() - self.last_heartbeat)
                continue
            for attempt_id in handles:
                self._new_handles.pop(attempt_id, None)
            self.last_heartbeat = time.monotonic()
            self.metrics.heartbeat_age.set(0)
            self.state = reply["state"]
            for attempt_id in reply.get("adopt", []):
                await self._adopt(attempt_id)
            for attempt_id in reply["cancel"]:
                task = self.running.get(attempt_id)
                if task is not None:
                    log.info("cancelling attempt %s", attempt_id)
                    task.cancel()
            notify.status(f"{self.state}; {len(self.running)} jobs running")

    async def _claims(self) -> None:
        while True:
            self._slot_freed.clear()
            capacity = self.inventory["slots"] + sum(c["slots"] for c in self.inventory["clusters"].values())
            free = capacity - len(self.running)  # the scheduler decides what fits where
            if self.state != "active" or free <= 0:
                with contextlib.suppress(TimeoutError):  # claim again as soon as a job ends
                    await asyncio.wait_for(self._slot_freed.wait(), 0.2)
                continue
            try:
                work = await self.api.call("POST", f"/v1/agents/{self.id}/claim", {"max": min(free, CLAIM_MAX), "wait": 20},
                                           timeout=40)
            except (ApiUnavailable, ApiError) as exc:
                log.debug("claim failed (%s)", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for item in work:
                self._start(item)

    async def _send_reports(self, reports: list[dict]) -> None:
        """The reports, and work already placed for the slots they free. Over HTTP the answer may
        wait briefly for the scheduler to place it: one request where a report and then a claim
        would be two. In-process a call is cheap and the wait would hold back the reports queued
        behind it, so it takes only what is placed. (A reply lost on the way is like a lost
        claim's: the heartbeat names the attempts, and they are adopted.)"""
        claim = len(reports) if self.state == "active" else 0
        wait = REPORT_CLAIM_WAIT if self.api.remote else 0.0
        reply = await self._retrying("POST", f"/v1/agents/{self.id}/reports",
                                     {"reports": reports, "claim": claim, "wait": wait})
        for item in reply.get("work", []):
            self._start(item)

    def _start(self, item: dict) -> None:
        task = asyncio.create_task(self._execute(item))
        self.running[item["attempt"]] = task
        self.metrics.running.set(len(self.running))
        task.add_done_callback(lambda _t, a=item["attempt"]: self._finished(a))

    def _finished(self, attempt: int) -> None:
        """The attempt's slot is free: claim again."""
        self.running.pop(attempt, None)
        self.metrics.running.set(len(self.running))
        self._slot_freed.set()

    def _context(self, item: dict):
        """Load (cached) the Lab, sync artifacts and prepare the runtime: blocking, run in a thread."""
        with self._context_lock:
            context = self._context_locked(item)
            self._prepared[self._context_key(item, context[0])] = context
            return context

    def _place_jobs(self, key: tuple[str, str], lab, layout: OutputLayout) -> None:
        try:
            place_jobs(lab, layout)
        except OSError as exc:  # the jobs run without them; the Lab's next job tries again
            log.warning("could not place the Lab's jobs under %s: %s", layout.artifacts, exc)
            with self._context_lock:
                self._synced.discard(key)

    @staticmethod
    def _context_key(item: dict, lab) -> tuple:
        """What _context's answer depends on besides the job itself."""
        return item["lab_path"], item["base_path"], item["target"], item["options"].get("runtime"), lab.image_of(item["job"])

    async def _context_of(self, item: dict):
        """_context's answer; from memory, on the loop, for a job like one seen before (all but the
        first of a run's jobs): the hop to a thread per job cost a no-op job ~1-2 ms under load."""
        lab = self._labs.get((item["lab_path"], item["base_path"]))
        context = lab is not None and self._prepared.get(self._context_key(item, lab))
        return context or await asyncio.to_thread(self._context, item)

    def _context_locked(self, item: dict):
        base = Path(item["base_path"])
        layout = OutputLayout(base)
        key = (item["lab_path"], item["base_path"])
        if key not in self._labs:
            self._labs[key] = open_lab_cached(Path(item["lab_path"]), base, verify=False)
        lab = self._labs[key]
        if key not in self._synced:
            self._synced.add(key)
            if not synced(lab, layout):
                # What jobs read (runs' metadata, images, host tools) before the first job; the
                # jobs' own directories meanwhile, since jobs run their scripts from verified
                # copies: a 10,000-job Lab no longer waits ~10 s for them before its first job.
                place_lab(lab, layout)
                threading.Thread(target=self._place_jobs, args=(key, lab, layout), daemon=True,
                                 name="place-jobs").start()
        image = lab.image_of(item["job"])
        name, target = resolve_target(self.settings.target_config(), item["target"])
        kind = choose_execution_type(target, item["options"].get("runtime"), image is not None, scheduler_of(target))
        rkey = (kind, item["lab_path"], item["base_path"], image)
        if rkey not in self._runtimes and target is not None and target.address:
            from ..targets.ssh.target import ssh_runtime  # asyncssh only for an SSH target

            self._runtimes[rkey] = ssh_runtime(name, kind, lab, layout, image, target)
        if rkey not in self._runtimes:
            runtime = make_runtime(kind, lab, layout, image, target)
            runtime.prepare()
            self._runtimes[rkey] = runtime
        if scheduler_of(target) in CLUSTER_SCHEDULERS and name not in self._cluster_launchers:
            self._cluster_launchers[name] = cluster_launcher(scheduler_of(target), LocalCommands(), target, self.id,
                                                             layout.cache)
        return lab, layout, self._runtimes[rkey], target

    async def _ssh_ready(self, name: str, target, layout: OutputLayout, lab, lab_path: str) -> None:
        """The SSH target connected and bootstrapped once, each Lab's artifacts sent once; while
        the host does not answer, the job waits (it stays running in the store)."""
        from ..targets.ssh.target import SshTarget, TargetUnavailable

        async with self._ssh_lock:
            delay = RETRY_SECONDS
            while name not in self._ssh_targets or (name, lab_path) not in self._ssh_labs:
                try:
                    if name not in self._ssh_targets:
                        remote = SshTarget(name, target, layout)
                        self._cluster_launchers[name] = await remote.open()
                        self._ssh_targets[name] = remote
                    await self._ssh_targets[name].push_lab(lab, list(lab.jobs))
                    self._ssh_labs.add((name, lab_path))
                except TargetUnavailable as exc:
                    if not exc.connection_problem:
                        raise
                    log.warning("%s; trying again in %.0fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    async def flush_remote(self) -> None:
        """Stopping: the markers SSH targets hold for their next poll cycle sent now."""
        await asyncio.gather(*(remote.flush() for remote in self._ssh_targets.values()))

    def _launcher(self, target_name: str | None):
        """(launcher, admission) for a job of this target: SLURM's for a cluster target."""
        name, _target = resolve_target(self.settings.target_config(), target_name)
        if name in self._cluster_launchers:
            return self._cluster_launchers[name], self._cluster_admission
        return self.launcher, self.admission

    async def _execute(self, item: dict) -> None:
        attempt, job_id = item["attempt"], item["job"]
        extra = {"run_id": item["run"], "job_id": job_id, "attempt": attempt}
        started = time.monotonic()
        recorded: list[Path] = []
        try:
            grant = hardware.grant_for(self.inventory["hardware"], item.get("devices") or [])
            hardware.check_present(grant, hardware.hardware_root(self.settings.agent.hardware_root))
            lab, layout, runtime, _target = await self._context_of(item)
            runtime = runtime.with_devices(grant)
            job = lab.jobs[job_id]
            resources = self.settings.resources.for_job(job_id, job.resource_hints, item["target"])
            worker = self.settings.resources.worker_overlay(job_id, item["target"])

            def spawned(handle: str) -> None:
                self._new_handles[attempt] = handle

            if _target is not None and _target.address:
                await self._ssh_ready(item["target"], _target, layout, lab, item["lab_path"])
            launcher, admission = self._launcher(item["target"])
            ctx = JobContext(lab, layout, runtime, admission, resources, worker, on_spawn=spawned,
                             launcher=launcher, attempt=attempt, run_id=item["run"],
                             device_allow=hardware.device_allow(grant), run_as=self._run_as(item),
                             max_work_items=self.settings.agent.max_work_items, recorded_exits=recorded)
            log.info("running %s", job_id, extra=extra)
            result = await execute_job(ctx, job)
            outcome = "succeeded" if result.ok else "failed"
            report = {"outcome": outcome, "reason": result.reason}
        except asyncio.CancelledError:
            report = {"outcome": "cancelled", "reason": "cancelled by user"}
            outcome = "cancelled"
        except UnitStopped as exc:  # the heartbeat hands the unreported attempt back to run it again
            log.warning("attempt %s: %s; it will run again", attempt, exc, extra=extra)
            return
        except hardware.DevicesMissing as exc:  # not the job's fault: register without them, run elsewhere
            log.error("attempt %s: %s", attempt, exc, extra=extra)
            self.inventory = hardware.without_gpus(self.inventory, exc.gpus)
            await self.register()
            report = {"outcome": "error", "reason": str(exc)}
            outcome = "error"
        except errors.RepxError as exc:
            report = {"outcome": "failed", "reason": str(exc)}
            outcome = "failed"
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                log.exception("attempt %s failed in the agent", attempt, extra=extra)
            # A full disk is the run's failure, not the agent's: retrying it would only fill it again.
            full = exc.errno == errno.ENOSPC
            report = {"outcome": "failed" if full else "error",
                      "reason": disk_full_reason(Path(item["base_path"]) / "outputs") if full else f"agent error: {exc}"}
            outcome = report["outcome"]
        except Exception as exc:  # an infrastructure failure must not kill the agent
            log.exception("attempt %s failed in the agent", attempt, extra=extra)
            report = {"outcome": "error", "reason": f"agent error: {exc}"}
            outcome = "error"
        self.metrics.durations.labels(outcome).observe(time.monotonic() - started)
        log.info("attempt %s %s", attempt, outcome, extra=extra)
        await self._reports.report(attempt, report)
        # Reported, the slot is free: claiming waits no longer for the exit files' removal (a thread hop).
        self._finished(attempt)
        await asyncio.to_thread(lambda: [forget_exit(guard) for guard in recorded])

    def _run_as(self, item: dict) -> int | None:
        agent = self.settings.agent
        return job_uid(item.get("submitter_uid"), run_as_submitter=agent.run_as_submitter, job_user=agent.job_user,
                       allow_daemon_user=agent.allow_jobs_as_daemon_user,
                       can_switch=os.geteuid() == 0 or self._launcher(item["target"])[0].name == "systemd")
