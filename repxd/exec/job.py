"""Running one job under the job contract (lab-format §5–6): directories, inputs.json,
parameters.json, logs, markers and the completion log."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..engine.admission import Admission
from ..lab.graph import Outcome
from ..lab.model import Job, Lab
from ..user_config import parse_memory, parse_time, step_resources
from .artifacts import verified_executable
from .inputs import resolve_inputs
from .launcher import (
    DISK_FULL,
    ExitStatus,
    LaunchRequest,
    SubprocessLauncher,
    forget_exit,
    launch_request,
    note_disk_full,
)
from .layout import (
    FAIL,
    SUCCESS,
    OutputLayout,
    Preparation,
    completion_line,
    write_marker,
)
from .runtimes import Runtime

T = TypeVar("T")


@dataclass
class JobContext:
    lab: Lab
    layout: OutputLayout
    runtime: Runtime
    admission: Admission
    resources: dict[str, Any] = field(default_factory=dict)
    worker_resources: dict[str, Any] = field(default_factory=dict)  # overlay: Resources.worker_overlay
    on_first_launch: Callable[[], None] | None = None
    on_spawn: Callable[[str], None] | None = None  # gets the process's handle: pid:N or unit:NAME
    launcher: Any = field(default_factory=SubprocessLauncher)
    attempt: int | None = None
    run_id: str | None = None
    device_allow: list[tuple[str, str]] = field(default_factory=list)
    run_as: int | None = None  # the submitter's uid: the launcher empties `out/` and hands it over
    max_work_items: int = 10_000  # a scatter's bound (agent.max_work_items); embedded runs keep the default
    after: list[str] = field(default_factory=list)  # cluster jobs the job's process starts after (SLURM afterok)
    # Exit records of processes whose outcome is written: forgotten at once (None), or, for the
    # agent, gathered here and forgotten only once its report reached the store, so that an agent
    # restarted before that (say, while the store's disk is full) adopts them instead of running again.
    recorded_exits: list[Path] | None = None

    def launched(self) -> None:
        """Called when a process of the job gets admitted; reports the job as running once."""
        if self.on_first_launch is not None:
            callback, self.on_first_launch = self.on_first_launch, None
            callback()

    def marked(self, repx: Path, marker: str, completion: str | None = None) -> None:
        """Tells a launcher whose processes run on another host (SSH) of a marker (and a job's
        completion line) written here, so that the other host's base path holds them too."""
        mirror = getattr(self.launcher, "mirror_marker", None)
        if mirror is not None:
            mirror(repx, marker, completion)

    def step_resources(self, hints: dict[str, Any]) -> dict[str, Any]:
        """A scatter-gather step's resources: the job's, its own hints, the config's overlay."""
        return step_resources(self.resources, hints, self.worker_resources)

    def launch_request(self, repx: Path, resources: dict[str, Any]) -> LaunchRequest:
        job_id, *step, _ = self.layout.relative_to_outputs(repx).split("/")
        cpus = int(resources.get("cpus-per-task") or 1)
        mem = parse_memory(resources["mem"]) if resources.get("mem") else 0
        return launch_request(job_id, ".".join(step), self.attempt, run_id=self.run_id, cpus=cpus, mem=mem,
                              time_seconds=time_limit(resources.get("time")), device_allow=self.device_allow,
                              user=self.run_as, resources=resources, after=self.after)


def time_limit(value: Any) -> int | None:
    """Seconds from a `time` resource; None when absent or not a SLURM-style limit."""
    try:
        return parse_time(str(value)) if value else None
    except ValueError:
        return None


@dataclass
class JobResult:
    job_id: str
    ok: bool
    reason: str | None = None


def script_path(ctx: JobContext, exe_path: str) -> Path:
    """Scripts run from `<base>/artifacts/`, from a copy keyed by their verified content."""
    return verified_executable(ctx.lab, ctx.layout, exe_path)


async def run_step(ctx: JobContext, script: Path, out: Path, repx: Path, inputs_json: Path,
                   params_json: Path, *, prepare: Preparation, record: Callable[[ExitStatus], T],
                   done: Callable[[], T | None] = lambda: None, resources: dict[str, Any] | None = None,
                   success: dict | None = None) -> T:
    """Run one process of the contract `<script> OUT INPUTS PARAMS` under admission, logging to
    `repx`, at most once at a time for this directory. Under the directory's guard: `done()`
    short-cuts when a concurrent launcher already finished it; an earlier launcher's finished
    process is adopted; else the launcher prepares (`prepare`) and starts it. `record(status)`
    writes the outcome. `resources` (default: the job's) decide admission and the process's
    limits. `success`: the evidence of a success, for a launcher that can write it (the status
    is then `recorded`)."""
    invocation = ctx.runtime.invocation(script, out, repx, [str(out), str(inputs_json), str(params_json)])
    request = ctx.launch_request(repx, ctx.resources if resources is None else resources)
    async with ctx.admission.hold(request.cpus, request.mem), ctx.launcher.guarded(ctx.layout.guard(repx), request) as guard:
        if guard.leftover_status is None:
            finished = done()
            if finished is not None:
                return finished
        ctx.launched()
        status = guard.leftover_status
        if status is None:
            status = await ctx.launcher.run(invocation, repx, guard, request, prepare, success=success,
                                            on_spawn=ctx.on_spawn)
        if status != 0 and status.cause is None and disk_full(repx):
            status = note_disk_full(guard.path, status)
        result = record(status)
        if ctx.recorded_exits is None:
            forget_exit(guard.path)
        else:
            ctx.recorded_exits.append(guard.path)
        return result


# Less room than this left after a failed job: it most likely failed for want of space.
DISK_FULL_BELOW = 256 << 10
OUT_OF_SPACE = "(out of space)"  # how exit_reason marks a status whose cause is a full disk


def disk_full(repx: Path) -> bool:
    """Whether a failed job most likely failed for want of space: its filesystem is (nearly) full."""
    try:
        fs = os.statvfs(repx)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < DISK_FULL_BELOW


def disk_full_reason(outputs: Path) -> str:
    return f"disk full: no space left on the filesystem of {outputs}; free space there and retry the run"


@contextmanager
def room_permitting():
    """For writes that are evidence only (log lines, the completion log): a full disk skips them
    rather than keep the marker, the outcome's record, from being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise


def finish(ctx: JobContext, job_id: str, repx: Path, ok: bool, reason: str | None = None,
           recorded: bool = False) -> JobResult:
    """The outcome's marker and completion line (`recorded`: the launcher wrote them already)."""
    if not ok and (disk_full(repx) or (reason or "").endswith(OUT_OF_SPACE)):
        reason = f"{reason}; {disk_full_reason(ctx.layout.outputs)}" if reason else disk_full_reason(ctx.layout.outputs)
    if not ok and reason:
        with room_permitting(), open(repx / "stderr.log", "a") as fh:
            fh.write(f"repx: {reason}\n")
    outcome = Outcome.OK if ok else Outcome.FAIL
    if not recorded:
        # Empty, so it needs no room on a full disk. If it cannot be written the exception leaves the
        # process's exit record in place, and an agent re-attaching adopts it instead of running again.
        write_marker(repx, SUCCESS if ok else FAIL)
        with room_permitting():
            ctx.layout.append_completion(job_id, outcome)
    ctx.marked(repx, SUCCESS if ok else FAIL, completion_line(job_id, outcome))
    return JobResult(job_id, ok, reason)


async def execute_single(ctx: JobContext, job: Job) -> JobResult:
    """Run `job`, one process, to a SUCCESS or FAIL marker (see `execute.execute_job`)."""
    layout = ctx.layout
    out, repx = layout.out_dir(job.id), layout.repx_dir(job.id)
    inputs = resolve_inputs(ctx.lab, job, layout)

    prepare = Preparation(out, repx, ctx.run_as is None, {"inputs.json": inputs, "parameters.json": job.spec.params})
    return await run_step(
        ctx, script_path(ctx, job.executables["main"].path), out, repx, repx / "inputs.json",
        repx / "parameters.json", prepare=prepare,
        record=lambda status: finish(ctx, job.id, repx, status == 0, None if status == 0 else exit_reason(status),
                                     recorded=status.recorded),
        done=lambda: JobResult(job.id, True) if (repx / SUCCESS).exists() else None,
        success=layout.success_evidence(job.id, repx))


def exit_reason(status: ExitStatus) -> str:
    if status.reason:
        return status.reason
    cause = status.cause
    if cause == "oom-kill":
        return "was killed for exceeding its memory limit (out of memory)"
    if cause == "timeout":
        return "was stopped for exceeding its time limit"
    if cause == DISK_FULL:  # finish() adds where
        return f"exited with status {int(status)} {OUT_OF_SPACE}"
    return f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
