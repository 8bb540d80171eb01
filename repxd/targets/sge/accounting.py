"""What Grid Engine says of its jobs: one `qstat -xml` call for all followed jobs, and `qacct -j`
only for those qstat no longer lists, parsed into the phases repx acts on (shared with SLURM)."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from ..cluster import Phase

# qacct's `failed` code when qmaster killed a job for its h_rt/h_cpu/h_vmem limit.
FAILED_LIMIT = 37


@dataclass(frozen=True)
class SgeJobState:
    sge_id: str  # "5" for a job, "3.2" for task 2 of array job 3
    state: str  # qstat's letters (qw, r, t, Eqw, ...); once ended "ended"/"limit"/"failed"; "gone": nobody knows it
    exit_code: int | None = None
    failed: int = 0
    detail: str = ""  # qacct's text after the failed code, or the queue instance it runs on

    @property
    def phase(self) -> Phase:
        if self.state == "ended":
            return Phase.ENDED
        if self.state == "limit":
            return Phase.KILLED
        if self.state in ("failed", "gone") or "E" in self.state:  # E: Grid Engine will not start it by itself
            return Phase.LOST
        return Phase.WAITING


def master_id(terse: str) -> str:
    """`qsub -terse` prints `5` for a job and `3.1-6:1` for an array: the job number qstat/qdel take."""
    return terse.strip().partition(".")[0]


def _task_ids(number: str, tasks: str) -> list[str]:
    """qstat's <tasks> `3-6:1`, `2` or `1,4` -> `N.3` ... ; no <tasks>: a plain job `N`."""
    if not tasks:
        return [number]
    ids = []
    for part in tasks.split(","):
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        if low.isdigit() and (not high or high.isdigit()) and (not step or step.isdigit()):
            ids += [f"{number}.{i}" for i in range(int(low), int(high or low) + 1, int(step or 1))]
    return ids


def parse_qstat_xml(text: str) -> dict[str, SgeJobState]:
    """`qstat -xml` (running jobs under queue_info, pending under job_info) by SGE id."""
    states = {}
    for job in ElementTree.fromstring(text).iter("job_list"):
        number = job.findtext("JB_job_number", "").strip()
        word = job.findtext("state", "").strip()
        where = job.findtext("queue_name", "").strip()
        for sge_id in _task_ids(number, job.findtext("tasks", "").strip()):
            states[sge_id] = SgeJobState(sge_id, word, detail=where)
    return states


def job_numbers_named(text: str, name: str) -> list[str]:
    """The job numbers `qstat -xml` lists under the job name `name`."""
    return sorted({job.findtext("JB_job_number", "").strip() for job in ElementTree.fromstring(text).iter("job_list")
                   if job.findtext("JB_name", "").strip() == name})


def _int(text: str) -> int | None:
    word = text.split()[0] if text.split() else ""
    return int(word) if word.lstrip("-").isdigit() else None


def parse_qacct(text: str) -> dict[str, SgeJobState]:
    """`qacct -j N` records (one per job or array task) by SGE id."""
    states = {}
    for record in text.split("=" * 20):
        fields = {}
        for line in record.splitlines():
            key, _, value = line.partition(" ")
            if key:
                fields[key] = value.strip()
        if "jobnumber" not in fields:
            continue
        task = fields.get("taskid", "undefined")
        sge_id = fields["jobnumber"] if task == "undefined" else f"{fields['jobnumber']}.{task}"
        failed = _int(fields.get("failed", "0")) or 0
        detail = fields.get("failed", "").partition(":")[2].strip()
        word = "ended" if failed == 0 else "limit" if failed == FAILED_LIMIT else "failed"
        states[sge_id] = SgeJobState(sge_id, word, _int(fields.get("exit_status", "")), failed, detail)
    return states


def describe(state: SgeJobState) -> str:
    """The reason a user reads in `show job`."""
    if state.phase is Phase.KILLED:
        return f"was stopped for exceeding its time limit (Grid Engine job {state.sge_id}: {state.detail})"
    if state.state == "gone":
        return f"Grid Engine job {state.sge_id} vanished without an exit status (neither qstat nor qacct knows it)"
    if state.phase is Phase.LOST and state.state == "failed":
        return f"Grid Engine job {state.sge_id} failed before or after its script (failed {state.failed}: {state.detail})"
    if state.phase is Phase.LOST:
        return f"Grid Engine job {state.sge_id} is in error state {state.state}; it will not start by itself"
    if state.phase is Phase.ENDED:
        return f"Grid Engine job {state.sge_id} ended with exit status {state.exit_code}"
    return f"Grid Engine job {state.sge_id} is {state.state}"
