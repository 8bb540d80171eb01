"""What SLURM says of its jobs: one `sacct` (or, without accounting, `squeue`) call for all the
jobs a launcher follows, parsed into states repx acts on."""

from __future__ import annotations

from dataclasses import dataclass

from ..cluster import Phase

SACCT_FORMAT = "JobID,State,ExitCode,NodeList,Reason"
SQUEUE_FORMAT = "%i|%T|%r|%N"


# SLURM's job states (sacct/squeue long names) and what they mean for a repx job.
_PHASES = {
    "PENDING": Phase.WAITING, "RUNNING": Phase.WAITING, "REQUEUED": Phase.WAITING, "REQUEUE_HOLD": Phase.WAITING,
    "REQUEUE_FED": Phase.WAITING, "RESIZING": Phase.WAITING, "SUSPENDED": Phase.WAITING,
    "CONFIGURING": Phase.WAITING, "COMPLETING": Phase.WAITING, "STAGE_OUT": Phase.WAITING,
    "SIGNALING": Phase.WAITING, "STOPPED": Phase.WAITING, "RESV_DEL_HOLD": Phase.WAITING,
    "COMPLETED": Phase.ENDED, "FAILED": Phase.ENDED,
    "OUT_OF_MEMORY": Phase.KILLED, "TIMEOUT": Phase.KILLED, "DEADLINE": Phase.KILLED,
    "NODE_FAIL": Phase.LOST, "PREEMPTED": Phase.LOST, "BOOT_FAIL": Phase.LOST, "SPECIAL_EXIT": Phase.LOST,
    "REVOKED": Phase.LOST,
    "GONE": Phase.LOST,  # ours: neither squeue nor sacct knows the job any more
    "CANCELLED": Phase.CANCELLED,
}


@dataclass(frozen=True)
class JobState:
    slurm_id: str  # "123" or "123_4" for an array task
    state: str  # SLURM's word: COMPLETED, OUT_OF_MEMORY, ...
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    detail: str = ""  # e.g. "by 0" after CANCELLED
    reason: str = ""  # SLURM's reason: Dependency, JobArrayTaskLimit, ...

    @property
    def phase(self) -> Phase:
        return _PHASES.get(self.state, Phase.WAITING)


def _exit_code(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def task_ids(slurm_id: str) -> list[str]:
    """`123_[4-6,9%2]` (array tasks SLURM has not started yet) -> 123_4, 123_5, 123_6, 123_9."""
    master, _, rest = slurm_id.partition("_[")
    if not rest:
        return [slurm_id]
    ids = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            ids += [f"{master}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct --parsable2 --noheader --allocations --format=SACCT_FORMAT` lines by SLURM id."""
    states = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 4 or "." in fields[0]:
            continue
        word, _, detail = fields[1].strip().partition(" ")
        code, sig = _exit_code(fields[2])
        reason = fields[4] if len(fields) > 4 else ""
        for slurm_id in task_ids(fields[0]):
            states[slurm_id] = JobState(slurm_id, word.rstrip("+"), code, sig, fields[3], detail, reason)
    return states


def parse_squeue(text: str) -> dict[str, JobState]:
    """`squeue --noheader --array --states=all --format=SQUEUE_FORMAT` lines by SLURM id (no exit
    codes: the exit file has them)."""
    states = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 2:
            continue
        for slurm_id in task_ids(fields[0]):
            states[slurm_id] = JobState(slurm_id, fields[1], nodes=fields[3] if len(fields) > 3 else "",
                                        reason=fields[2] if len(fields) > 2 else "")
    return states


def master_id(slurm_id: str) -> str:
    """The id sacct/squeue accept for a job or a whole array: `123` of `123_4`."""
    return slurm_id.partition("_")[0]


def describe(state: JobState) -> str:
    """The reason a user reads in `show job`."""
    where = f" on {state.nodes}" if state.nodes and state.nodes not in ("None assigned", "(null)") else ""
    if state.state == "OUT_OF_MEMORY":
        return f"was killed for exceeding its memory limit (SLURM job {state.slurm_id}: OUT_OF_MEMORY{where})"
    if state.state in ("TIMEOUT", "DEADLINE"):
        return f"was stopped for exceeding its time limit (SLURM job {state.slurm_id}: {state.state}{where})"
    if state.phase is Phase.CANCELLED:
        by = f" {state.detail}" if state.detail else ""
        return f"was cancelled in SLURM (job {state.slurm_id}: CANCELLED{by})"
    if state.state == "GONE":
        return f"SLURM job {state.slurm_id} vanished without an exit status (neither squeue nor sacct knows it)"
    return f"SLURM job {state.slurm_id} ended {state.state}{where}"
