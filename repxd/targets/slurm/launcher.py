"""SlurmLauncher: the launcher interface of `exec.launcher` (guarded/run) with SLURM batch jobs.

Ready processes are collected for `submit_window` seconds and go out as one `sbatch --array` per
set of equal directives (split at MaxArraySize and the script size sbatch accepts), with an
optional `%N` throttle. One status query per poll interval covers every job being followed.
Each submission's SLURM id is recorded beside the process's guard before anything else happens,
so a restarted repx follows the job it already submitted instead of submitting it again."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import re
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...errors import DependencyCancelled, RepxError
from ...exec.launcher import (
    ExitStatus,
    Guard,
    Identity,
    LaunchRequest,
    adoptable_status,
    exit_file,
    guarded,
    hand_over,
    user_identity,
)
from ...exec.layout import UnreadableJobFile, read_job_file
from ...exec.runtimes import Invocation
from ..commands import CommandRunner
from .accounting import (
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    JobState,
    Phase,
    describe,
    master_id,
    parse_sacct,
    parse_squeue,
)
from .script import MAX_SCRIPT_BYTES, Directives, Process, arm, batch_script

log = logging.getLogger("repx.slurm")
RECORD_SUFFIX = "slurm"
# A job that no status query lists this many times in a row is gone (purged, or never existed).
UNSEEN_POLLS = 5


class SlurmError(RepxError):
    """SLURM refused something repx asked of it."""


@dataclass
class SlurmOptions:
    poll_interval: float = 5.0
    submit_window: float = 0.5
    array_throttle: int | None = None
    max_lost: int = 2  # submissions again after a node failure or preemption, per process
    max_array_size: int | None = None  # default: the cluster's MaxArraySize


def record_file(guard: Path) -> Path:
    return guard.with_name(f"{guard.name}.{RECORD_SUFFIX}")


@dataclass
class _Pending:
    process: Process
    directives: Directives
    name: str
    identity: Identity | None
    future: asyncio.Future


@dataclass
class SlurmLauncher:
    commands: CommandRunner
    options: SlurmOptions = field(default_factory=SlurmOptions)
    tag: str = "repx"
    log_dir: Path | None = None  # where SLURM writes the batch scripts' own output

    name = "slurm"

    def __post_init__(self) -> None:
        self._queue: list[_Pending] = []
        self._flush_task: asyncio.Task | None = None
        self._followed: dict[str, asyncio.Future] = {}
        self._unseen: dict[str, int] = defaultdict(int)
        self._poll_task: asyncio.Task | None = None
        self._running_on: dict[str, str] = {}  # followed job -> its nodes, while SLURM says RUNNING
        self._notes: dict[str, Path] = {}  # followed job -> the stderr.log that hears of its requeues
        self._accounting: bool | None = None  # sacct works; None until first asked
        self._limits: tuple[int, int | None] | None = None  # (array size, submit limit)
        self._in_flight = 0
        self._room = asyncio.Condition()

    # ---- the launcher interface ------------------------------------------------------------

    @asynccontextmanager
    async def guarded(self, path: Path, request: LaunchRequest):
        """The guard's lock; a batch job an earlier repx submitted for this process is followed
        to its end first, and its outcome becomes the guard's leftover status."""
        async with guarded(path) as guard:
            record = record_file(path)
            try:
                slurm_id = record.read_text().strip() if guard.leftover_status is None else ""
            except FileNotFoundError:
                slurm_id = ""
            if slurm_id:
                log.info("following SLURM job %s submitted earlier for %s", slurm_id, request.job_id)
                state = await self._follow(slurm_id)
                guard.leftover_status = self.outcome(state, path)
            try:
                yield guard
            finally:
                record.unlink(missing_ok=True)

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  on_spawn=None) -> int:
        stdout, stderr = repx / "stdout.log", repx / "stderr.log"
        identity = user_identity(request.user) if request.user is not None else None
        if identity is not None:  # the job runs as its submitter: `out/` and its logs become theirs
            await asyncio.to_thread(hand_over, invocation.cwd, identity)
        for log_file in (stdout, stderr):
            _owned_empty(log_file, identity)
        process = Process(invocation, stdout, stderr, exit_file(guard.path))
        directives = Directives.from_resources(request.resources)
        name = f"repx.{request.run_id or self.tag}.{request.job_id}"
        if request.after:
            directives = replace(directives, after=tuple(request.after))
        for lost in range(self.options.max_lost + 1):
            # The batch script writes the exit status as the job's user, into a file made for it.
            _owned_empty(exit_file(guard.path), identity, mode=0o600)
            try:
                slurm_id = await self._submit(process, directives, name, identity)
            except SlurmError as exc:
                if not directives.after or "dependency" not in str(exc).lower():
                    raise
                # What it was to start after has ended and been forgotten: go in plainly if it succeeded.
                directives = await self._without_ended_dependencies(directives)
                slurm_id = await self._submit(process, directives, name, identity)
            record_file(guard.path).write_text(slurm_id)
            if on_spawn is not None:
                on_spawn(f"slurm:{slurm_id}")
            self._notes[slurm_id] = stderr
            try:
                state = await self._follow(slurm_id)
            except asyncio.CancelledError:
                await asyncio.shield(self._cancel([slurm_id]))
                raise
            finally:
                self._notes.pop(slurm_id, None)
                await self._released()
            if directives.after and state.phase is Phase.CANCELLED and "Dependency" in state.reason:
                raise DependencyCancelled(f"SLURM job {slurm_id} was cancelled: a job it needed failed")
            directives = replace(directives, after=())  # a resubmission's predecessors have all succeeded
            status = self.outcome(state, guard.path, stderr)
            if status is not None:
                return status
            again = lost < self.options.max_lost
            with open(stderr, "a") as fh:
                fh.write(f"repx: {describe(state)}; {'submitting it again' if again else 'giving up'}"
                         f" ({lost + 1} of {self.options.max_lost + 1})\n")
        return ExitStatus.with_cause(-9, None, f"was lost {self.options.max_lost + 1} times: {describe(state)}")

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

    def _log_dir(self, identity: Identity | None) -> Path:
        """Where SLURM writes batch output: per user (theirs, 0700) when jobs run as submitters."""
        path = self.log_dir if identity is None else self.log_dir / str(identity.uid)
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True, mode=0o700 if identity else 0o755)
            if identity is not None:
                os.chown(path, identity.uid, identity.gid)
        return path

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

    async def _submit(self, process: Process, directives: Directives, name: str, identity: Identity | None) -> str:
        async with self._room:
            limits = await self._cluster_limits()
            await self._room.wait_for(lambda: limits[1] is None or self._in_flight < limits[1])
            self._in_flight += 1
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(process, directives, name, identity, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())
        try:
            return await future
        except BaseException:
            await self._released()
            raise

    async def _released(self) -> None:
        async with self._room:
            self._in_flight -= 1
            self._room.notify_all()

    async def _flush_later(self) -> None:
        """Submit what gathered during the window, until nothing is waiting. Processes queued
        while a submission is under way (a chained job whose predecessor was just submitted) go
        out with the next round: `_submit` starts a new task only once this one has returned."""
        while self._queue:
            await asyncio.sleep(self.options.submit_window)
            queue, self._queue = [p for p in self._queue if not p.future.done()], []
            groups: dict[tuple, list[_Pending]] = defaultdict(list)
            for pending in queue:
                groups[pending.directives, pending.identity].append(pending)
            array_size = (await self._cluster_limits())[0]
            await asyncio.gather(*(self._sbatch(chunk) for group in groups.values()
                                   for chunk in _chunks(group, array_size)))

    async def _sbatch(self, chunk: list[_Pending]) -> None:
        first = chunk[0]
        argv = ["sbatch", "--parsable", f"--job-name={first.name}" + (f"+{len(chunk) - 1}" if len(chunk) > 1 else ""),
                f"--chdir={first.process.invocation.cwd}"]
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
            error = SlurmError(f"SLURM refused the job: {result.failure()}")
            for pending in chunk:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        job_id = result.stdout.strip().split(";")[0]
        log.info("submitted %d process(es) as SLURM job %s", len(chunk), job_id)
        orphans = []
        for index, pending in enumerate(chunk):
            slurm_id = f"{job_id}_{index}" if len(chunk) > 1 else job_id
            if pending.future.done():  # cancelled while sbatch ran
                orphans.append(slurm_id)
            else:
                pending.future.set_result(slurm_id)
        if orphans:
            await self._cancel(orphans)

    async def _cluster_limits(self) -> tuple[int, int | None]:
        """(largest array, most jobs this user may have submitted), asked once per launcher."""
        if self._limits is None:
            size = self.options.max_array_size
            if size is None:
                result = await self.commands.run(["scontrol", "show", "config"])
                match = re.search(r"^MaxArraySize\s*=\s*(\d+)", result.stdout, re.MULTILINE) if result.ok else None
                size = int(match.group(1)) if match else 1001
            submit_limit = None
            result = await self.commands.run(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                              f"where user={getpass.getuser()}", "format=MaxSubmitJobs"])
            if result.ok:
                limits = [int(v) for v in result.stdout.split() if v.strip().isdigit()]
                submit_limit = min(limits) if limits else None
            self._limits = (max(1, size), submit_limit)
        return self._limits

    # ---- status -----------------------------------------------------------------------------

    async def _follow(self, slurm_id: str) -> JobState:
        future = self._followed.get(slurm_id)
        if future is None:
            future = self._followed[slurm_id] = asyncio.get_running_loop().create_future()
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.create_task(self._poll())
        return await asyncio.shield(future)

    async def _poll(self) -> None:
        while self._followed:
            await asyncio.sleep(self.options.poll_interval)
            try:
                states = await self._query(sorted(self._followed))
            except Exception:  # a failing query is retried next cycle; the jobs keep running
                log.exception("SLURM status query failed")
                continue
            for slurm_id in list(self._followed):
                state = states.get(slurm_id)
                if state is None:
                    self._unseen[slurm_id] += 1
                    if self._unseen[slurm_id] < UNSEEN_POLLS:
                        continue
                    state = JobState(slurm_id, "GONE")
                elif state.phase is Phase.WAITING:
                    self._unseen.pop(slurm_id, None)
                    self._note_requeue(state)
                    continue
                self._running_on.pop(slurm_id, None)
                self._unseen.pop(slurm_id, None)
                future = self._followed.pop(slurm_id)
                if not future.done():
                    future.set_result(state)

    def _note_requeue(self, state: JobState) -> None:
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

    # ---- cancel -----------------------------------------------------------------------------

    async def _cancel(self, slurm_ids: list[str]) -> None:
        result = await self.commands.run(["scancel", *slurm_ids])
        if not result.ok:
            log.warning("scancel %s: %s", " ".join(slurm_ids), result.failure())
        for slurm_id in slurm_ids:
            future = self._followed.pop(slurm_id, None)
            if future is not None and not future.done():
                future.cancel()


def _owned_empty(path: Path, identity: Identity | None, mode: int = 0o644) -> None:
    """An empty file at `path`, the job's user's when it runs as one (replacing what was there)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        if identity is not None:
            os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)


def _chunks(group: list[_Pending], array_size: int) -> list[list[_Pending]]:
    """Arrays of at most `array_size` tasks whose script stays within what sbatch accepts."""
    chunks, current, size = [], [], 0
    for pending in group:
        length = len(arm(0, pending.process)) + 8
        if current and (len(current) >= array_size or size + length > MAX_SCRIPT_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(pending)
        size += length
    if current:
        chunks.append(current)
    return chunks


def launcher_for(commands: CommandRunner, settings: Any, tag: str, log_dir: Path) -> SlurmLauncher:
    """A launcher from a target's `[targets.X.slurm]` section (None: the defaults)."""
    options = SlurmOptions()
    if settings is not None:
        for key in ("poll_interval", "submit_window", "array_throttle", "max_lost", "max_array_size"):
            value = getattr(settings, key, None)
            if value is not None:
                setattr(options, key, value)
    return SlurmLauncher(commands, options, tag, log_dir)


