"""The embedded default: plan a selection against a base path and run it in this process."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .. import hardware
from ..errors import ConfigError
from ..exec.artifacts import place_jobs, place_lab, sync_artifacts, synced
from ..exec.execute import execute_job
from ..exec.job import JobContext, JobResult
from ..exec.launcher import SubprocessLauncher
from ..exec.layout import OutputLayout
from ..exec.runtimes import Runtime, choose_execution_type, make_runtime
from ..lab.graph import Outcome, closure, select, topological_order
from ..lab.loader import load_lab
from ..lab.model import Lab
from ..targets.commands import LocalCommands
from ..targets.schedulers import CLUSTER_SCHEDULERS, cluster_launcher
from ..user_config import Config, Resources, TargetConfig, parse_memory, state_home
from .admission import Admission
from .gpu_pool import GpuPool, GpuUnavailable
from .local import Chain, LocalEngine, Reporter, RunSummary

# Processes a run keeps submitted to SLURM at once, unless -j says fewer (the association's
# MaxSubmitJobs, when set, is respected on top).
SLURM_IN_FLIGHT = 100_000


def resolve_target(config: Config, name: str | None) -> tuple[str, TargetConfig | None]:
    """The named target, else config's submission_target, else `local` if configured."""
    name = name or config.submission_target or "local"
    target = config.targets.get(name)
    if target is None and name != "local":
        known = ", ".join(sorted(config.targets)) or "none configured"
        raise ConfigError(f"unknown target {name!r} (targets: {known}); define [targets.{name}] in config.toml")
    if target is None:
        return name, None
    if target.address and config.scheduler_of(target) not in ("local", "slurm"):
        raise ConfigError(f"target {name!r} has an address (ssh) and uses {config.scheduler_of(target)}; this version runs"
                          " jobs on an SSH host with its local scheduler or its SLURM only: set default_scheduler ="
                          " \"local\" or \"slurm\"")
    if target.artifact_store == "node-local":
        raise ConfigError(f"target {name!r}: artifact_store = \"node-local\" concerns cluster nodes, which this version"
                          " cannot run yet; remove it or set \"shared\"")
    # Upstream's rule decides the scheduler once: the target's, else the top-level one, else slurm.
    return name, target.model_copy(update={"default_scheduler": config.scheduler_of(target)})


def scheduler_of(target: TargetConfig | None) -> str:
    """The scheduler of a target `resolve_target` returned."""
    return (target.default_scheduler or "local") if target is not None else "local"


def base_path_for(target: TargetConfig | None, override: Path | None, name: str = "") -> Path:
    """The base path repx prepares jobs in. An SSH target's base_path is on its host; here a
    mirror of it holds inputs, logs and markers: this machine's copy of the target, where
    `repxctl pull` also puts outputs (targets.ssh.sync.local_base_for, not imported: asyncssh)."""
    if override is not None:
        return override.resolve()
    if target is not None and target.address:
        return state_home() / "targets" / name
    if target is not None:
        return target.base_path.expanduser().resolve()
    return state_home() / "local"


def machine_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def inter_run_order(lab: Lab, job_ids) -> dict[str, dict[str, bool]]:
    """job -> {job of a run it depends on: soft?}: a dependent run's first stages start after the
    other run's jobs when both are being run (inter-run mappings carry no job id)."""
    after: dict[str, dict[str, bool]] = {}
    for job_id in job_ids:
        for exe in lab.jobs[job_id].executables.values():
            for mapping in exe.inputs:
                if mapping.type == "inter-run" and mapping.source_run in lab.runs:
                    for other in lab.runs[mapping.source_run].job_ids:
                        after.setdefault(job_id, {})[other] = mapping.dependency_type == "soft"
    return after


@dataclass
class Plan:
    lab: Lab
    layout: OutputLayout
    target_name: str
    target: TargetConfig | None
    selected: list[str]
    closure: set[str]
    outcomes: dict[str, Outcome]
    to_run: list[str] = field(default_factory=list)


def open_lab(lab_path: Path, base: Path, verify: bool = True) -> Lab:
    return load_lab(lab_path, verify=verify, unpack_dir=OutputLayout(base).cache / "labs")


def plan_run(lab: Lab, base: Path, specs: list[str], target_name: str, target: TargetConfig | None) -> Plan:
    layout = OutputLayout(base)
    selected = select(lab, specs)
    needed = closure(lab, selected)
    outcomes = layout.outcomes(needed)
    to_run = [j for j in topological_order(lab, needed) if outcomes.get(j) is not Outcome.OK]
    return Plan(lab, layout, target_name, target, selected, needed, outcomes, to_run)


@dataclass
class ExecutionOptions:
    concurrency: int | None = None
    mem: str | None = None
    continue_on_failure: bool = False
    runtime: str | None = None
    resources: Resources = field(default_factory=Resources)


class EmbeddedRun:
    """Runs a Plan: syncs artifacts, prepares runtimes, drives the LocalEngine."""

    def __init__(self, plan: Plan, options: ExecutionOptions, reporter: Reporter | None = None) -> None:
        self.plan = plan
        self.options = options
        self.reporter = reporter or Reporter()
        total_cpus = len(os.sched_getaffinity(0))
        local = plan.target.local if plan.target else None
        slots = options.concurrency or (local.local_concurrency if local and local.local_concurrency else total_cpus)
        if slots < 1:
            raise ConfigError("-j must be at least 1")
        mem = parse_memory(options.mem) if options.mem else machine_memory()
        self.scheduler = scheduler_of(plan.target)
        self.launcher = SubprocessLauncher()
        if self.scheduler in CLUSTER_SCHEDULERS:
            # The cluster admits jobs to its nodes; here only -j bounds how many are submitted at once.
            self.launcher = cluster_launcher(self.scheduler, LocalCommands(), plan.target, secrets.token_hex(4),
                                             plan.layout.cache)
            self.admission = Admission(options.concurrency or SLURM_IN_FLIGHT, SLURM_IN_FLIGHT, 1 << 62)
        elif plan.target is not None and plan.target.address:
            # Processes on another host: this machine's cpus and memory do not bound them.
            self.admission = Admission(slots, 1 << 30, 1 << 62)
        else:
            self.admission = Admission(slots, total_cpus, mem)
        self.remote = None
        if plan.target is not None and plan.target.address:
            from ..targets.ssh.target import SshTarget  # asyncssh only when a run needs it

            self.remote = SshTarget(plan.target_name, plan.target, plan.layout)
        self.runtimes: dict[str | None, Runtime] = {}
        self.gpus = GpuPool(hardware.agent_inventory)
        self.engine: LocalEngine | None = None
        self.jobs_to_place = False  # prepare() decides

    def _runtime(self, image: str | None) -> Runtime:
        if image not in self.runtimes:
            kind = choose_execution_type(self.plan.target, self.options.runtime, image is not None, self.scheduler)
            if self.remote is not None:
                from ..targets.ssh.target import ssh_runtime

                runtime = ssh_runtime(self.plan.target_name, kind, self.plan.lab, self.plan.layout, image,
                                      self.plan.target)
            else:
                runtime = make_runtime(kind, self.plan.lab, self.plan.layout, image, self.plan.target)
                runtime.prepare()
            self.runtimes[image] = runtime
        return self.runtimes[image]

    def prepare(self) -> None:
        """Everything that can fail before the first job: artifacts and runtimes. Of a local
        run's artifacts, its jobs' directories are placed while the jobs run (see `_run`)."""
        self.jobs_to_place = self.remote is None and not synced(self.plan.lab, self.plan.layout)
        if self.jobs_to_place:
            place_lab(self.plan.lab, self.plan.layout)
        else:
            sync_artifacts(self.plan.lab, self.plan.layout, self.plan.to_run)
        for image in {self.plan.lab.image_of(j) for j in self.plan.to_run}:
            self._runtime(image)

    async def _execute(self, job_id: str, on_first_launch, chain: Chain | None = None, on_handle=None) -> object:
        lab = self.plan.lab
        job = lab.jobs[job_id]
        resources = self.options.resources.for_job(job_id, job.resource_hints, self.plan.target_name)
        worker = self.options.resources.worker_overlay(job_id, self.plan.target_name)
        try:
            async with self.gpus.take(hardware.gpu_request(resources)) as grant:
                runtime = self._runtime(lab.image_of(job_id))
                if grant.gpus:
                    runtime = runtime.with_devices(grant)
                ctx = JobContext(lab, self.plan.layout, runtime, self.admission, resources, worker, on_first_launch,
                                 launcher=self.launcher, device_allow=hardware.device_allow(grant) if grant.gpus else [],
                                 after=chain.after if chain else [],
                                 on_spawn=(lambda handle: on_handle(handle.removeprefix(f"{self.scheduler}:")))
                                 if on_handle else None)
                return await execute_job(ctx, job)
        except GpuUnavailable as exc:
            return JobResult(job_id, False, str(exc))

    async def run(self) -> RunSummary:
        if self.remote is None:
            return await self._run()
        try:
            self.launcher = await self.remote.open()  # the remote brought up to date first
            await self.remote.push_lab(self.plan.lab, self.plan.to_run)
            return await self._run()
        finally:
            await self.remote.close()

    async def _run(self) -> RunSummary:
        # On SLURM a simple job can go in before its inputs exist, to start after its
        # predecessors' batch jobs succeed (afterok): no poll interval lost between stages.
        chainable = ({j for j in self.plan.to_run if not self.plan.lab.jobs[j].is_scatter_gather}
                     if self.scheduler == "slurm" else set())
        self.engine = LocalEngine(self.plan.lab, self.plan.to_run, self._execute, self.admission,
                                  self.options.continue_on_failure, self.reporter,
                                  inter_run_order(self.plan.lab, self.plan.to_run), chainable)
        if not self.jobs_to_place:
            return await self.engine.run()
        # On another core (its time is in system calls), instead of before the first job.
        placing = asyncio.ensure_future(asyncio.to_thread(place_jobs, self.plan.lab, self.plan.layout, self.plan.to_run))
        try:
            return await self.engine.run()
        finally:
            await asyncio.shield(placing)

    def cancel(self) -> None:
        if self.engine is not None:
            self.engine.cancel()
