"""SgeLauncher: the cluster launcher (`targets.cluster`) with Grid Engine's commands (SGE/UGE).

Every submission is an array job (`qsub -terse -t 1-N`, `-tc` throttle), also for one process, so
ids are uniformly `JOB.TASK` and one script serves both. Status: one `qstat -xml` per poll for all
followed jobs, and `qacct -j` only for a job qstat no longer lists; `qdel` to cancel.
Dependencies are not handed to Grid Engine: `-hold_jid` waits for an end, not a success, so a
job waits in repx for its inputs as on a local target."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...exec.launcher import ExitStatus, LaunchRequest, adoptable_status
from ...user_config import parse_memory, parse_time
from ..batch import arm, batch_script
from ..cluster import UNSEEN_POLLS, ClusterError, ClusterLauncher, Pending, Phase, options_from
from ..commands import CommandRunner
from .accounting import (
    SgeJobState,
    describe,
    job_numbers_named,
    master_id,
    parse_qacct,
    parse_qstat_xml,
)

log = logging.getLogger("repx.sge")
# qsub refuses job names with these (and a leading digit).
_NAME_FORBIDDEN = re.compile(r"[\s/:@\\*?]")
# qmaster writes accounting records in batches (reporting_params flush_time, 15 s by default):
# a job qstat forgot is not called gone before qacct had that long to list it.
ACCOUNTING_LAG = 30.0
# qacct's `failed` code for a job ended by a signal after it started (qdel, or a limit's SIGKILL).
FAILED_BY_SIGNAL = 100


class SgeError(ClusterError):
    """Grid Engine refused something repx asked of it."""


def _memory(value: str) -> str:
    """`4GiB`, `512MB` -> whole MiB as Grid Engine reads them (`4096M`); what we cannot read goes as given."""
    try:
        return f"{-(-parse_memory(value) // (1 << 20))}M"
    except ValueError:
        return value


def _seconds(value: str) -> str:
    try:
        return str(parse_time(value))
    except ValueError:
        return value


@dataclass(frozen=True)
class SgeDirectives:
    """What Grid Engine is asked for; processes with equal directives share one array job."""

    queue: str | None = None
    account: str | None = None
    slots: int | None = None
    parallel_environment: str | None = None
    mem: str | None = None
    time: str | None = None
    extra: tuple[str, ...] = ()

    @classmethod
    def from_resources(cls, resources: dict[str, Any], parallel_environment: str | None) -> SgeDirectives:
        """The scheduler-neutral keys: `queue` (or SLURM's `partition`) -> `-q`, `account` -> `-A`,
        `cpus-per-task` -> slots of the target's parallel environment (none configured: ignored,
        as Grid Engine has no per-job cpu count without one), `mem` -> `h_vmem`, `time` -> `h_rt`,
        and `qsub_opts` as given."""
        cpus = resources.get("cpus-per-task")
        text = {k: (None if resources.get(k) in (None, "") else str(resources[k]))
                for k in ("queue", "partition", "account", "mem", "time")}
        return cls(queue=text["queue"] or text["partition"], account=text["account"],
                   slots=int(cpus) if cpus and parallel_environment else None,
                   parallel_environment=parallel_environment if cpus else None,
                   mem=text["mem"], time=text["time"], extra=tuple(str(o) for o in resources.get("qsub_opts") or ()))

    def options(self) -> list[str]:
        opts = []
        if self.queue:
            opts += ["-q", self.queue]
        if self.account:
            opts += ["-A", self.account]
        if self.slots:
            opts += ["-pe", self.parallel_environment, str(self.slots)]
        if self.mem:
            opts += ["-l", f"h_vmem={_memory(self.mem)}"]
        if self.time:
            opts += ["-l", f"h_rt={_seconds(self.time)}"]
        return [*opts, *self.extra]


@dataclass
class SgeLauncher(ClusterLauncher):
    parallel_environment: str | None = None  # `-pe NAME N` for a job's cpus

    name: ClassVar[str] = "sge"
    record_suffix: ClassVar[str] = "sge"

    def directives_for(self, request: LaunchRequest) -> SgeDirectives:
        return SgeDirectives.from_resources(request.resources, self.parallel_environment)

    def describe(self, state: SgeJobState) -> str:
        return describe(state)

    def gone(self, job_id: str) -> SgeJobState:
        return SgeJobState(job_id, "gone")

    def _unseen_limit(self) -> int:
        return max(UNSEEN_POLLS, math.ceil(ACCOUNTING_LAG / self.options.poll_interval))

    def outcome(self, state: SgeJobState, guard: Path, stderr: Path | None = None) -> ExitStatus | None:
        """The exit file's status when the script wrote it; else Grid Engine's word; None when the
        job was lost (failed before its script, error state, gone without a trace)."""
        if state.phase is Phase.ENDED or state.state in ("gone", "failed"):
            recorded = adoptable_status(guard)
            if recorded is not None:
                return recorded
        if state.phase is Phase.ENDED:
            return ExitStatus(state.exit_code or 0)
        if state.phase is Phase.KILLED:
            return ExitStatus.with_cause(-9, "timeout", describe(state))
        if state.state == "failed" and state.failed == FAILED_BY_SIGNAL and (state.exit_code or 0) > 128:
            return ExitStatus.with_cause(128 - state.exit_code, None,
                                         f"Grid Engine job {state.sge_id} was killed by signal {state.exit_code - 128}")
        return None

    # ---- submission -------------------------------------------------------------------------

    def _array_name(self, chunk: list[Pending]) -> str:
        return _NAME_FORBIDDEN.sub("_", super()._array_name(chunk))

    async def _submit_chunk(self, chunk: list[Pending], name: str) -> list[str] | None:
        first = chunk[0]
        argv = ["qsub", "-terse", "-N", name, "-wd", str(first.process.invocation.cwd), "-S", "/bin/sh", "-j", "y",
                "-o", f"{self._log_dir(first.identity)}/$JOB_ID.$TASK_ID.out" if self.log_dir else "/dev/null",
                "-t", f"1-{len(chunk)}"]
        if self.options.array_throttle:
            argv += ["-tc", str(self.options.array_throttle)]
        argv += first.directives.options()
        script = batch_script([arm(i, p.process) for i, p in enumerate(chunk, 1)], index="SGE_TASK_ID")
        result = await self.commands.run(argv, stdin=script, identity=first.identity)
        number = master_id(result.stdout) if result.ok else ""
        if not number.isdigit():
            self._refused(chunk, SgeError(f"Grid Engine refused the job: {result.failure()}"))
            return None
        log.info("submitted %d process(es) as Grid Engine job %s", len(chunk), number)
        return [self._task_id(number, index, len(chunk)) for index in range(len(chunk))]

    def _task_id(self, array_id: str, index: int, size: int) -> str:
        return f"{array_id}.{index + 1}"

    async def _find_submitted(self, name: str) -> str | None:
        """qstat's job names, then qacct's record of that name (qacct -j takes a name too)."""
        result = await self.commands.run(["qstat", "-xml", "-u", "*"])
        if result.ok:
            numbers = job_numbers_named(result.stdout, name)
            if numbers:
                return numbers[0]
        result = await self.commands.run(["qacct", "-j", name])
        found = sorted({master_id(sge_id) for sge_id in parse_qacct(result.stdout)}) if result.ok else []
        return found[0] if found else None

    async def _cluster_limits(self) -> tuple[int, int | None]:
        """max_aj_tasks and max_u_jobs of the global configuration (0: unlimited)."""
        if self._limits is None:
            result = await self.commands.run(["qconf", "-sconf"])
            found = dict(re.findall(r"^(max_aj_tasks|max_u_jobs)\s+(\d+)", result.stdout, re.MULTILINE)) if result.ok else {}
            size = self.options.max_array_size or int(found.get("max_aj_tasks") or 75000)
            self._limits = (max(1, size), (int(found["max_u_jobs"]) or None) if "max_u_jobs" in found else None)
        return self._limits

    # ---- status -----------------------------------------------------------------------------

    async def _query(self, sge_ids: list[str]) -> dict[str, SgeJobState]:
        """One `qstat -xml` for every user's jobs (jobs may run as their submitters); `qacct -j`
        per job number qstat no longer lists. A job in error state is deleted here: Grid Engine
        keeps it forever, and repx submits it again under its own policy."""
        result = await self.commands.run(["qstat", "-xml", "-u", "*"])
        if not result.ok:
            raise SgeError(result.failure())
        listed = parse_qstat_xml(result.stdout)
        states = {s: listed[s] for s in sge_ids if s in listed}
        broken = [s for s, state in states.items() if state.phase is Phase.LOST]
        if broken:
            await self._delete(broken)
        for sge_id in sge_ids:  # its script wrote the exit file, then ended: no need to wait for qacct
            guard = self._guards.get(sge_id)
            if sge_id not in states and guard is not None and adoptable_status(guard) is not None:
                states[sge_id] = SgeJobState(sge_id, "ended")
        for number in sorted({master_id(s) for s in sge_ids if s not in states}):
            result = await self.commands.run(["qacct", "-j", number])
            if result.ok:  # not yet accounted: absent until the next poll
                states.update({s: st for s, st in parse_qacct(result.stdout).items() if s in sge_ids})
        return states

    async def _delete(self, sge_ids: list[str]) -> None:
        result = await self.commands.run(self._cancel_argv(sge_ids))
        if not result.ok:
            log.warning("qdel %s: %s", " ".join(sge_ids), result.failure())

    def _cancel_argv(self, sge_ids: list[str]) -> list[str]:
        return ["qdel", *sge_ids]


def launcher_for(commands: CommandRunner, settings: Any, tag: str, log_dir: Path) -> SgeLauncher:
    """A launcher from a target's `[targets.X.sge]` section (None: the defaults)."""
    return SgeLauncher(commands, options_from(settings), tag, log_dir,
                       parallel_environment=getattr(settings, "parallel_environment", None))
