"""ClusterLauncher: the launcher interface of `exec.launcher` (guarded/run) with a cluster
scheduler's batch jobs; what SLURM and Grid Engine have in common.

Ready processes are collected for `submit_window` seconds and go out as one array submission per
set of equal directives (split at the cluster's largest array), with an optional throttle. One
status query per poll interval covers every job being followed. Before a submission, each process's
record beside its guard names the array (a name unique to this submission) and its index in it;
once the scheduler answers, the record holds the job's id. A restarted repx follows the job it
already submitted, by id or, if it died before the answer, by the array's name, instead of
submitting it again. A subclass says how to submit, ask, cancel and
read a scheduler's states (`_submit_chunk`, `_query`, `_cancel_argv`, `outcome`, `describe`)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from ..errors import RepxError
from ..exec.launcher import (
    ExitStatus,
    Guard,
    Identity,
    LaunchRequest,
    guarded,
    hand_over,
    user_identity,
)
from ..exec.layout import Preparation
from ..exec.runtimes import Invocation
from .batch import Process
from .commands import CommandRunner, RunnerUnreachable

log = logging.getLogger("repx.cluster")
# A job that no status query lists this many times in a row is gone (purged, or never existed).
UNSEEN_POLLS = 5


class Phase(Enum):
    WAITING = "waiting"  # pending, running, requeued: ask again later
    ENDED = "ended"  # the batch script ran to its end (its exit code says how the job did)
    KILLED = "killed"  # stopped by a limit: memory, time
    LOST = "lost"  # not the job's fault: node failure, preemption, boot failure; run it again
    CANCELLED = "cancelled"  # someone cancelled it in the scheduler


class ClusterError(RepxError):
    """The cluster scheduler refused something repx asked of it."""


@dataclass
class ClusterOptions:
    poll_interval: float = 5.0
    submit_window: float = 0.5
    array_throttle: int | None = None
    max_lost: int = 2  # submissions again after a node failure or preemption, per process
    max_array_size: int | None = None  # default: the cluster's own limit


@dataclass
class Pending:
    process: Process
    directives: Any  # the scheduler's frozen Directives: equal ones share an array
    name: str
    identity: Identity | None
    future: asyncio.Future


@dataclass
class ClusterLauncher:
    commands: CommandRunner
    options: ClusterOptions = field(default_factory=ClusterOptions)
    tag: str = "repx"
    log_dir: Path | None = None  # where the scheduler writes the batch scripts' own output

    name: ClassVar[str] = "cluster"
    record_suffix: ClassVar[str] = "cluster"

    def __post_init__(self) -> None:
        self._queue: list[Pending] = []
        self._flush_task: asyncio.Task | None = None
        self._followed: dict[str, asyncio.Future] = {}
        self._unseen: dict[str, int] = defaultdict(int)
        self._poll_task: asyncio.Task | None = None
        self._notes: dict[str, Path] = {}  # followed job -> the stderr.log that hears of its requeues
        self._guards: dict[str, Path] = {}  # followed job -> its process's guard (beside it, the exit file)
        self._limits: tuple[int, int | None] | None = None  # (array size, submit limit)
        self._in_flight = 0
        self._room = asyncio.Condition()

    # ---- what a scheduler supplies ----------------------------------------------------------

    def directives_for(self, request: LaunchRequest) -> Any:
        raise NotImplementedError

    def outcome(self, state: Any, guard: Path, stderr: Path | None = None) -> ExitStatus | None:
        """The process's exit status from the scheduler's word and the exit file; None when lost."""
        raise NotImplementedError

    def describe(self, state: Any) -> str:
        raise NotImplementedError

    def gone(self, job_id: str) -> Any:
        """The state of a job no status query knows any more."""
        raise NotImplementedError

    async def _submit_chunk(self, chunk: list[Pending], name: str) -> list[str] | None:
        """Submit one array named `name`; its tasks' ids in order, or None after failing every future."""
        raise NotImplementedError

    async def _find_submitted(self, name: str) -> str | None:
        """The id of the array job called `name` if the scheduler has it (queued, running or
        accounted), for a repx that died between submitting and hearing the id."""
        raise NotImplementedError

    def _task_id(self, array_id: str, index: int, size: int) -> str:
        """The id of task `index` (from 0) of an array of `size` tasks, as `_submit_chunk` returns it."""
        raise NotImplementedError

    def _array_name(self, chunk: list[Pending]) -> str:
        """A name for the array, unique to this submission: the first process's name (which
        carries the run and job id), how many more share it, and a random part."""
        more = f"+{len(chunk) - 1}" if len(chunk) > 1 else ""
        return f"{chunk[0].name}{more}.{secrets.token_hex(3)}"

    async def _query(self, job_ids: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError

    async def _cluster_limits(self) -> tuple[int, int | None]:
        """(largest array, most jobs this user may have submitted), asked once per launcher."""
        raise NotImplementedError

    def _chunk_cost(self, pending: Pending) -> int:
        """What one task adds to an array's submission, against `max_chunk_cost`."""
        return 1

    max_chunk_cost: ClassVar[int] = 1 << 62

    async def _submit_first(self, process: Process, directives: Any, name: str,
                            identity: Identity | None) -> tuple[str, Any]:
        """The first submission of a process; a scheduler may adjust its directives on refusal."""
        return await self._submit(process, directives, name, identity), directives

    def _check_dependency(self, job_id: str, directives: Any, state: Any) -> None:
        """Raise DependencyCancelled when the scheduler cancelled the job for a failed predecessor."""

    def _resubmitted(self, directives: Any) -> Any:
        """Directives for a submission again after a loss."""
        return directives

    def _unseen_limit(self) -> int:
        """Polls a job may be absent from every answer before it counts as gone."""
        return UNSEEN_POLLS

    def _note_waiting(self, state: Any) -> None:
        """A followed job still waits or runs (requeues are noticed here)."""

    def _forget(self, job_id: str) -> None:
        """A followed job has ended."""

    # ---- the launcher interface ------------------------------------------------------------

    def record_file(self, guard: Path) -> Path:
        """Beside the guard: the submission's intent, then the scheduler's id."""
        return guard.with_name(f"{guard.name}.{self.record_suffix}")

    @asynccontextmanager
    async def guarded(self, path: Path, request: LaunchRequest):
        """The guard's lock; a batch job an earlier repx submitted for this process is followed
        to its end first, and its outcome becomes the guard's leftover status."""
        async with guarded(path) as guard:
            record = self.record_file(path)
            job_id = await self._recorded_job(record) if guard.leftover_status is None else ""
            if job_id:
                log.info("following %s job %s submitted earlier for %s", self.name, job_id, request.job_id)
                self._guards[job_id] = path
                state = await self._follow(job_id)
                guard.leftover_status = self.outcome(state, path)
            try:
                yield guard
            finally:
                record.unlink(missing_ok=True)

    async def _recorded_job(self, record: Path) -> str:
        """The id of the job an earlier repx submitted for this process, or "" (none, or it died
        before the submission reached the scheduler)."""
        try:
            words = record.read_text().split()
        except FileNotFoundError:
            return ""
        if len(words) == 4 and words[0] == "submitting":
            _, name, index, size = words
            array_id = await self._find_submitted(name)
            if array_id is None:
                log.info("%s never received the submission %s: submitting again", self.name, name)
                return ""
            return self._task_id(array_id, int(index), int(size))
        return words[0] if len(words) == 1 else ""

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  prepare: Preparation, *, success: dict | None = None, on_spawn=None) -> ExitStatus:
        """`success` is not written here (the batch script records the status only): `finish` does."""
        prepare()  # `out/` is handed to the job's user, and the logs are made in `repx/`
        return await self._submit_and_follow(invocation, repx, guard, request, on_spawn)

    async def _submit_and_follow(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                                 on_spawn=None) -> ExitStatus:
        """Submit a prepared process, submitting again after losses, and follow it to its end."""
        stdout, stderr = repx / "stdout.log", repx / "stderr.log"
        identity = user_identity(request.user) if request.user is not None else None
        if identity is not None:  # the job runs as its submitter: `out/` and its logs become theirs
            await asyncio.to_thread(hand_over, invocation.cwd, identity)
        for log_file in (stdout, stderr):
            owned_empty(log_file, identity)
        process = Process(invocation, stdout, stderr, guard.path)
        directives = self.directives_for(request)
        name = f"repx.{request.run_id or self.tag}.{request.job_id}"
        for lost in range(self.options.max_lost + 1):
            # The batch script writes the exit status as the job's user, into a file made for it.
            owned_empty(process.exit_file, identity, mode=0o600)
            job_id, directives = await self._submit_first(process, directives, name, identity)
            self.record_file(guard.path).write_text(job_id)
            if on_spawn is not None:
                on_spawn(f"{self.name}:{job_id}")
            self._notes[job_id] = stderr
            self._guards[job_id] = guard.path
            try:
                state = await self._follow(job_id)
            except asyncio.CancelledError:
                await asyncio.shield(self._cancel([job_id]))
                raise
            finally:
                self._notes.pop(job_id, None)
                await self._released()
            self._check_dependency(job_id, directives, state)
            directives = self._resubmitted(directives)
            status = self.outcome(state, guard.path, stderr)
            if status is not None:
                return status
            again = lost < self.options.max_lost
            with open(stderr, "a") as fh:
                fh.write(f"repx: {self.describe(state)}; {'submitting it again' if again else 'giving up'}"
                         f" ({lost + 1} of {self.options.max_lost + 1})\n")
        return ExitStatus.with_cause(-9, None, f"was lost {self.options.max_lost + 1} times: {self.describe(state)}")

    def _log_dir(self, identity: Identity | None) -> Path:
        """Where the scheduler writes batch output: per user (theirs, 0700) when jobs run as submitters."""
        path = self.log_dir if identity is None else self.log_dir / str(identity.uid)
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True, mode=0o700 if identity else 0o755)
            if identity is not None:
                os.chown(path, identity.uid, identity.gid)
        return path

    # ---- submission -------------------------------------------------------------------------

    async def _submit(self, process: Process, directives: Any, name: str, identity: Identity | None) -> str:
        async with self._room:
            limits = await self._cluster_limits()
            await self._room.wait_for(lambda: limits[1] is None or self._in_flight < limits[1])
            self._in_flight += 1
        future = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(process, directives, name, identity, future))
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
            groups: dict[tuple, list[Pending]] = defaultdict(list)
            for pending in queue:
                groups[pending.directives, pending.identity].append(pending)
            array_size = (await self._cluster_limits())[0]
            await asyncio.gather(*(self._submit_array(chunk) for group in groups.values()
                                   for chunk in self._chunks(group, array_size)))

    async def _submit_array(self, chunk: list[Pending]) -> None:
        name = self._array_name(chunk)
        for index, pending in enumerate(chunk):
            self.record_file(pending.process.guard).write_text(f"submitting {name} {index} {len(chunk)}\n")
        job_ids = await self._submit_chunk(chunk, name)
        if job_ids is None:
            return
        orphans = []
        for pending, job_id in zip(chunk, job_ids, strict=True):
            if pending.future.done():  # cancelled while the submission ran
                orphans.append(job_id)
            else:
                pending.future.set_result(job_id)
        if orphans:
            await self._cancel(orphans)

    def _refused(self, chunk: list[Pending], error: Exception) -> None:
        for pending in chunk:
            if not pending.future.done():
                pending.future.set_exception(error)

    def _chunks(self, group: list[Pending], array_size: int) -> list[list[Pending]]:
        """Arrays of at most `array_size` tasks whose cost stays within what the scheduler accepts."""
        chunks, current, size = [], [], 0
        for pending in group:
            cost = self._chunk_cost(pending)
            if current and (len(current) >= array_size or size + cost > self.max_chunk_cost):
                chunks.append(current)
                current, size = [], 0
            current.append(pending)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    # ---- status -----------------------------------------------------------------------------

    async def _follow(self, job_id: str) -> Any:
        future = self._followed.get(job_id)
        if future is None:
            future = self._followed[job_id] = asyncio.get_running_loop().create_future()
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.create_task(self._poll())
        return await asyncio.shield(future)

    async def _poll(self) -> None:
        while self._followed:
            await asyncio.sleep(self.options.poll_interval)
            try:
                states = await self._query(sorted(self._followed))
            except RunnerUnreachable as exc:  # the jobs keep running; the next cycle asks again
                log.warning("%s status query: %s; asking again in %gs", self.name, exc, self.options.poll_interval)
                continue
            except Exception:  # unexpected: kept whole in the log, and retried next cycle as well
                log.exception("%s status query failed", self.name)
                continue
            for job_id in list(self._followed):
                state = states.get(job_id)
                if state is None:
                    self._unseen[job_id] += 1
                    if self._unseen[job_id] < self._unseen_limit():
                        continue
                    state = self.gone(job_id)
                elif state.phase is Phase.WAITING:
                    self._unseen.pop(job_id, None)
                    self._note_waiting(state)
                    continue
                self._forget(job_id)
                self._guards.pop(job_id, None)
                self._unseen.pop(job_id, None)
                future = self._followed.pop(job_id)
                if not future.done():
                    future.set_result(state)

    # ---- cancel -----------------------------------------------------------------------------

    async def _cancel(self, job_ids: list[str]) -> None:
        argv = self._cancel_argv(job_ids)
        result = await self.commands.run(argv)
        if not result.ok:
            log.warning("%s: %s", " ".join(argv), result.failure())
        for job_id in job_ids:
            future = self._followed.pop(job_id, None)
            if future is not None and not future.done():
                future.cancel()


def owned_empty(path: Path, identity: Identity | None, mode: int = 0o644) -> None:
    """An empty file at `path`, the job's user's when it runs as one (replacing what was there)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        if identity is not None:
            os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)


def options_from(settings: Any) -> ClusterOptions:
    """Options from a target's scheduler section (None: the defaults)."""
    options = ClusterOptions()
    if settings is not None:
        for key in ("poll_interval", "submit_window", "array_throttle", "max_lost", "max_array_size"):
            value = getattr(settings, key, None)
            if value is not None:
                setattr(options, key, value)
    return options
