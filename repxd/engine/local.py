"""The embedded engine: runs a selection's DAG on this machine with cpu/memory admission.

Semantics follow upstream's local scheduler: ready jobs start as admission allows; a failure
blocks its dependents; without `continue_on_failure` the first failure stops new launches while
running jobs finish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import DependencyCancelled, RepxError
from ..exec.job import JobResult
from ..lab.model import Lab
from .admission import Admission, AdmissionClosed


@dataclass
class RunSummary:
    planned: list[str]
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked and not self.not_started and not self.cancelled


class Reporter:
    """Progress callbacks; the CLI renders them."""

    def started(self, job_id: str) -> None: ...
    def finished(self, job_id: str, ok: bool, seconds: float, reason: str | None) -> None: ...


@dataclass(frozen=True)
class Chain:
    """Start only after these cluster jobs (a job's unfinished predecessors) have succeeded."""

    after: list[str]


# What a chained job's task returns when the cluster cancelled it for a failed predecessor.
DEPENDENCY_CANCELLED = object()


@dataclass
class LocalEngine:
    lab: Lab
    plan: list[str]
    execute: Callable  # async (job_id, on_first_launch, chain: Chain | None) -> JobResult
    admission: Admission
    continue_on_failure: bool = False
    reporter: Reporter = field(default_factory=Reporter)
    # Extra "runs after" edges (job -> {predecessor: is_soft}): inter-run dependencies order a
    # dependent run's first stages after the other run's jobs when both are in the plan.
    after: dict[str, dict[str, bool]] = field(default_factory=dict)
    # Jobs that may be handed to a cluster scheduler before their inputs exist, to start after
    # their predecessors' cluster jobs (SLURM afterok); empty: every job waits for its inputs.
    chainable: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._cancelled = False

    def cancel(self) -> None:
        """Stop now: nothing new starts, running jobs are stopped and left without markers."""
        self._cancelled = True
        self.admission.close()
        for task in self._tasks:
            task.cancel()

    async def run(self) -> RunSummary:
        start = time.monotonic()
        planned = set(self.plan)
        summary = RunSummary(list(self.plan))
        preds: dict[str, dict[str, bool]] = {}
        for j in planned:
            job = self.lab.jobs[j]
            edges = {d: d in job.soft_deps for d in job.deps if d in planned}
            edges.update({d: soft for d, soft in self.after.get(j, {}).items() if d in planned and d != j})
            preds[j] = edges
        dependents: dict[str, list[str]] = {j: [] for j in planned}
        for j, edges in preds.items():
            for d in edges:
                dependents[d].append(j)
        waiting = {j: len(preds[j]) for j in planned}
        done: set[str] = set()
        finished = asyncio.Queue()
        handles: dict[str, str] = {}  # a chainable job's cluster id once submitted
        early: dict[str, asyncio.Task] = {}  # jobs submitted to start after their predecessors' cluster jobs
        launched: set[str] = set()
        running = 0

        def launch(job_id: str, chain: Chain | None = None) -> None:
            nonlocal running
            launched.add(job_id)
            running += 1
            on_handle = (lambda handle: submitted(job_id, handle)) if job_id in self.chainable else None
            task = asyncio.create_task(self._one(job_id, finished, chain, on_handle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if chain is not None:
                early[job_id] = task

        def submitted(job_id: str, handle: str) -> None:
            """A chainable job is in the cluster: dependents whose every unfinished predecessor is
            there too go in now, to start after them."""
            handles[job_id] = handle
            for child in dependents[job_id]:
                if child in launched or child in done or child not in self.chainable or self.admission.closed:
                    continue
                open_preds = [p for p in preds[child] if p not in succeeded]
                if all(not preds[child][p] and p in handles for p in open_preds):
                    launch(child, Chain([handles[p] for p in open_preds]))

        succeeded: set[str] = set()

        def block(first: str) -> None:
            """`first` and everything downstream of it will not run."""
            stack = [first]
            while stack:
                job_id = stack.pop()
                if job_id not in done:
                    done.add(job_id)
                    summary.blocked.append(job_id)
                    if job_id in early:  # in the cluster already: take it back
                        early.pop(job_id).cancel()
                    stack.extend(dependents[job_id])

        for job_id in self.plan:
            if waiting[job_id] == 0:
                launch(job_id)
        while running:
            job_id, result = await finished.get()
            running -= 1
            early.pop(job_id, None)
            if job_id in done:  # blocked while it waited in the cluster, and taken back
                continue
            if result is DEPENDENCY_CANCELLED:
                # The cluster cancelled it because a predecessor failed; that failure blocks it.
                launched.discard(job_id)
                continue
            done.add(job_id)
            if result is None:
                summary.not_started.append(job_id)
                continue
            if result.ok:
                summary.succeeded.append(job_id)
                succeeded.add(job_id)
            else:
                summary.failed[job_id] = result.reason or "failed"
                if not self.continue_on_failure:
                    self.admission.close()
            for child in dependents[job_id]:
                if child in done:
                    continue
                if result.ok or preds[child][job_id]:
                    waiting[child] -= 1
                    if waiting[child] == 0 and child not in launched:
                        if self.admission.closed:
                            done.add(child)
                            summary.not_started.append(child)
                        else:
                            launch(child)
                else:
                    block(child)
        summary.not_started.extend(j for j in self.plan if j not in done)
        summary.cancelled = self._cancelled
        summary.seconds = time.monotonic() - start
        return summary

    async def _one(self, job_id: str, finished: asyncio.Queue, chain: Chain | None = None,
                   on_handle: Callable[[str], None] | None = None) -> None:
        started = time.monotonic()
        result = None
        try:
            if not self.admission.closed:
                result = await self.execute(job_id, lambda: self.reporter.started(job_id), chain, on_handle)
                self.reporter.finished(job_id, result.ok, time.monotonic() - started, result.reason)
        except (AdmissionClosed, asyncio.CancelledError):
            result = None
        except DependencyCancelled:
            result = DEPENDENCY_CANCELLED
        except RepxError as exc:  # e.g. an input the Lab cannot resolve: this job fails, as in the agent
            result = JobResult(job_id, False, str(exc))
            self.reporter.finished(job_id, False, time.monotonic() - started, result.reason)
        except OSError as exc:  # its directory removed or unwritable under it, a full disk: this job fails
            result = JobResult(job_id, False, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            self.reporter.finished(job_id, False, time.monotonic() - started, result.reason)
        finally:
            finished.put_nowait((job_id, result))
