"""SlurmLauncher: the cluster launcher (`targets.cluster`) with SLURM's commands.

`sbatch --parsable` with the script on stdin, `--array` with a `%N` throttle split at
MaxArraySize and the script size sbatch accepts, `afterok` dependencies; `squeue` (then `sacct`
for jobs it forgot) once per poll; `scancel`; requeues and slurmstepd's messages noted in the
job's stderr.log."""

from __future__ import annotations

import getpass
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ...errors import DependencyCancelled
from ...exec.launcher import ExitStatus, Identity, LaunchRequest, adoptable_status
from ...exec.layout import UnreadableJobFile, read_job_file
from ..batch import Process, arm, batch_script
from ..cluster import ClusterError, ClusterLauncher, Pending, Phase, options_from
from ..commands import CommandRunner
from .accounting import (
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    JobState,
    describe,
    master_id,
    parse_sacct,
    parse_squeue,
)
from .script import MAX_SCRIPT_BYTES, Directives

log = logging.getLogger("repx.slurm")


class SlurmError(ClusterError):
    """SLURM refused something repx asked of it."""


@dataclass
class SlurmLauncher(ClusterLauncher):
    name: ClassVar[str] = "slurm"
    record_suffix: ClassVar[str] = "slurm"
    max_chunk_cost: ClassVar[int] = MAX_SCRIPT_BYTES

    def __post_init__(self) -> None:
        super().__post_init__()
        self._running_on: dict[str, str] = {}  # followed job -> its nodes, while SLURM says RUNNING
        self._accounting: bool | None = None  # sacct works; None until first asked

    def directives_for(self, request: LaunchRequest) -> Directives:
        directives = Directives.from_resources(request.resources)
        return replace(directives, after=tuple(request.after)) if request.after else directives

    def describe(self, state: JobState) -> str:
        return describe(state)

    def gone(self, job_id: str) -> JobState:
        return JobState(job_id, "GONE")

    # ---- outcomes ---------------------------------------------------------------------------

    def outcome(self, state: JobState, guard: Path, stderr: Path | None = None) -> ExitStatus | None:
        """The process's exit status from SLURM's word, its own messages and the exit file; None
        when it was lost. slurmstepd's lines are copied to the job's stderr.log."""
        said = self._slurm_messages(state.slurm_id)
        if said and stderr is not None:
            with open(stderr, "a") as fh:
                fh.writelines(f"{line}\n" for line in said)
        if state.phase is Phase.ENDED and any("exceeded memory limit" in line.lower() for line in said):
            # Without the cgroup plugin SLURM's accounting kills the job and calls it FAILED.
            return ExitStatus.with_cause(-9, "oom-kill", describe(JobState(state.slurm_id, "OUT_OF_MEMORY",
                                                                              nodes=state.nodes)))
        if state.phase is Phase.ENDED or state.state == "GONE":
            recorded = adoptable_status(guard)
            if recorded is not None:
                return recorded
        if state.phase is Phase.ENDED:
            if state.signal:
                return ExitStatus(-state.signal)
            return ExitStatus(state.exit_code or 0) if state.state == "COMPLETED" else ExitStatus(state.exit_code or 1)
        if state.phase is Phase.KILLED:
            cause = "oom-kill" if state.state == "OUT_OF_MEMORY" else "timeout"
            return ExitStatus.with_cause(-9, cause, describe(state))
        if state.phase is Phase.CANCELLED:
            return ExitStatus.with_cause(-15, None, describe(state))
        return None  # LOST (or gone without a trace)

    def _slurm_messages(self, slurm_id: str) -> list[str]:
        """slurmstepd's own lines from the batch output (memory kills, cancellations), bounded;
        read without following links or blocking, as the job's user could have replaced the file."""
        if self.log_dir is None:
            return []
        text = ""
        try:
            per_user = [p for p in self.log_dir.iterdir() if p.name.isdigit()]
        except OSError:
            per_user = []
        for directory in (self.log_dir, *per_user):
            try:
                text = read_job_file(directory / f"{slurm_id}.out", 64 << 10).decode(errors="replace")
                break
            except (OSError, UnreadableJobFile):
                continue
        return [line for line in text.splitlines() if line.startswith("slurmstepd")][:20]

    # ---- dependencies -----------------------------------------------------------------------

    async def _submit_first(self, process: Process, directives: Directives, name: str,
                            identity: Identity | None) -> tuple[str, Directives]:
        try:
            return await self._submit(process, directives, name, identity), directives
        except SlurmError as exc:
            if not directives.after or "dependency" not in str(exc).lower():
                raise
        # What it was to start after has ended and been forgotten: go in plainly if it succeeded.
        directives = await self._without_ended_dependencies(directives)
        return await self._submit(process, directives, name, identity), directives

    def _resubmitted(self, directives: Directives) -> Directives:
        return replace(directives, after=())  # a resubmission's predecessors have all succeeded

    def _check_dependency(self, job_id: str, directives: Directives, state: JobState) -> None:
        if directives.after and state.phase is Phase.CANCELLED and "Dependency" in state.reason:
            raise DependencyCancelled(f"SLURM job {job_id} was cancelled: a job it needed failed")

    async def _without_ended_dependencies(self, directives: Directives) -> Directives:
        """sbatch refused a dependency on jobs SLURM has forgotten: they ended. Drop those that
        succeeded; any other ending means this job will not run."""
        states = await self._query(list(directives.after))
        for slurm_id in directives.after:
            state = states.get(slurm_id)
            if state is None or state.phase is Phase.WAITING:
                continue
            if state.phase is not Phase.ENDED or (state.exit_code or state.signal):
                raise DependencyCancelled(f"a job this one needed ended {state.state} in SLURM")
        return replace(directives, after=tuple(s for s in directives.after
                                               if (st := states.get(s)) is not None and st.phase is Phase.WAITING))

    # ---- submission -------------------------------------------------------------------------

    def _chunk_cost(self, pending: Pending) -> int:
        return len(arm(0, pending.process)) + 8

    async def _submit_chunk(self, chunk: list[Pending], name: str) -> list[str] | None:
        first = chunk[0]
        argv = ["sbatch", "--parsable", f"--job-name={name}", f"--chdir={first.process.invocation.cwd}"]
        if self.log_dir is not None:
            log_dir = self._log_dir(first.identity)
            pattern = "%A_%a" if len(chunk) > 1 else "%j"
            argv += [f"--output={log_dir}/{pattern}.out", f"--error={log_dir}/{pattern}.out"]
        else:
            argv += ["--output=/dev/null", "--error=/dev/null"]
        if not any(opt.startswith("--requeue") for opt in first.directives.extra):
            # A node failure or preemption ends the job (NODE_FAIL, PREEMPTED) and repx submits it
            # again at once under its own policy (max_lost), instead of SLURM's requeue, which
            # holds it back for minutes (BeginTime). `--requeue` in sbatch_opts keeps SLURM's way.
            argv.append("--no-requeue")
        argv += first.directives.options()
        if len(chunk) > 1:
            throttle = f"%{self.options.array_throttle}" if self.options.array_throttle else ""
            argv.append(f"--array=0-{len(chunk) - 1}{throttle}")
        script = batch_script([arm(i, p.process) for i, p in enumerate(chunk)])
        result = await self.commands.run(argv, stdin=script, identity=first.identity)
        if not result.ok:
            self._refused(chunk, SlurmError(f"SLURM refused the job: {result.failure()}"))
            return None
        job_id = result.stdout.strip().split(";")[0]
        log.info("submitted %d process(es) as SLURM job %s", len(chunk), job_id)
        return [self._task_id(job_id, index, len(chunk)) for index in range(len(chunk))]

    def _task_id(self, array_id: str, index: int, size: int) -> str:
        return f"{array_id}_{index}" if size > 1 else array_id

    async def _find_submitted(self, name: str) -> str | None:
        """squeue by name (every state it still knows), then accounting for the last week."""
        result = await self.commands.run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%F"])
        found = result.stdout.split() if result.ok else []
        if not found and self._accounting is not False:
            result = await self.commands.run(["sacct", "--noheader", "--parsable2", "--allocations",
                                              f"--name={name}", "--starttime=now-7days", "--format=JobID"])
            found = [master_id(line) for line in result.stdout.split()] if result.ok else []
        return found[0] if found else None

    def _account(self) -> str:
        """The user SLURM's association limits apply to: whoever runs the commands."""
        return getpass.getuser()

    async def _cluster_limits(self) -> tuple[int, int | None]:
        if self._limits is None:
            size = self.options.max_array_size
            if size is None:
                result = await self.commands.run(["scontrol", "show", "config"])
                match = re.search(r"^MaxArraySize\s*=\s*(\d+)", result.stdout, re.MULTILINE) if result.ok else None
                size = int(match.group(1)) if match else 1001
            submit_limit = None
            result = await self.commands.run(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                              f"where user={self._account()}", "format=MaxSubmitJobs"])
            if result.ok:
                limits = [int(v) for v in result.stdout.split() if v.strip().isdigit()]
                submit_limit = min(limits) if limits else None
            self._limits = (max(1, size), submit_limit)
        return self._limits

    # ---- status -----------------------------------------------------------------------------

    def _forget(self, job_id: str) -> None:
        self._running_on.pop(job_id, None)

    def _note_waiting(self, state: JobState) -> None:
        """A job seen running and now pending again was requeued by SLURM (`--requeue`): say so
        in its stderr.log, where `repxctl log` shows it."""
        if state.state == "RUNNING":
            self._running_on[state.slurm_id] = state.nodes
        elif state.slurm_id in self._running_on:
            nodes = self._running_on.pop(state.slurm_id)
            stderr = self._notes.get(state.slurm_id)
            if stderr is not None:
                with open(stderr, "a") as fh:
                    fh.write(f"repx: SLURM requeued job {state.slurm_id} (it was running on {nodes or 'a node'});"
                             f" it is {state.state} again\n")

    async def _query(self, slurm_ids: list[str]) -> dict[str, JobState]:
        """One `squeue` for every followed job; `sacct` only for jobs squeue no longer lists.

        squeue first because sacct lags behind: a job submitted a moment ago, and array tasks
        held back by a throttle, are absent from sacct for a while (measured on slurm 22.05), so
        its silence cannot tell "not recorded yet" from "gone". squeue knows every queued job and,
        until MinJobAge passes, how an ended one ended; accounting answers for the rest."""
        masters = ",".join(sorted({master_id(s) for s in slurm_ids}))
        result = await self.commands.run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={masters}",
                                          f"--format={SQUEUE_FORMAT}"])
        if not result.ok and "Invalid job id" not in result.stderr:
            raise SlurmError(result.failure())
        states = parse_squeue(result.stdout) if result.ok else {}
        gone = sorted({master_id(s) for s in slurm_ids if s not in states})
        if gone and self._accounting is not False:
            result = await self.commands.run(["sacct", "--noheader", "--parsable2", "--allocations",
                                              f"--jobs={','.join(gone)}", f"--format={SACCT_FORMAT}"])
            if result.ok:
                self._accounting = True
                states.update(parse_sacct(result.stdout))
            elif self._accounting is None:
                log.warning("sacct unavailable (%s); jobs squeue forgets are judged by their exit files", result.failure())
                self._accounting = False
        if self._accounting is False:  # nobody else can say: an ended job's exit file does
            for slurm_id in slurm_ids:
                states.setdefault(slurm_id, JobState(slurm_id, "GONE"))
        return states

    def _cancel_argv(self, slurm_ids: list[str]) -> list[str]:
        return ["scancel", *slurm_ids]


def launcher_for(commands: CommandRunner, settings: Any, tag: str, log_dir: Path) -> SlurmLauncher:
    """A launcher from a target's `[targets.X.slurm]` section (None: the defaults)."""
    return SlurmLauncher(commands, options_from(settings), tag, log_dir)
