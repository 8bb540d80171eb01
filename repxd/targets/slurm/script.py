"""The `sbatch` options for processes that SLURM starts (the script itself: `targets.batch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...user_config import parse_memory

# sbatch refuses scripts beyond SchedulerParameters=max_script_size (4 MB by default).
MAX_SCRIPT_BYTES = 3 << 20


@dataclass(frozen=True)
class Directives:
    """What SLURM is asked for; processes with equal directives can share one array."""

    partition: str | None = None
    account: str | None = None
    cpus: int | None = None
    mem: str | None = None
    time: str | None = None
    extra: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # start once these jobs have succeeded; cancelled if one fails

    @classmethod
    def from_resources(cls, resources: dict[str, Any]) -> Directives:
        """Upstream's keys (partition, cpus-per-task, mem, time, sbatch_opts); `queue` is read as
        the partition and `account` as the account, the scheduler-neutral spellings."""
        cpus = resources.get("cpus-per-task")
        return cls(partition=_text(resources.get("partition") or resources.get("queue")),
                   account=_text(resources.get("account")),
                   cpus=int(cpus) if cpus else None, mem=_text(resources.get("mem")),
                   time=_text(resources.get("time")), extra=tuple(str(o) for o in resources.get("sbatch_opts") or ()))

    def options(self) -> list[str]:
        opts = []
        if self.partition:
            opts.append(f"--partition={self.partition}")
        if self.account:
            opts.append(f"--account={self.account}")
        if self.cpus:
            opts.append(f"--cpus-per-task={self.cpus}")
        if self.mem:
            opts.append(f"--mem={_slurm_memory(self.mem)}")
        if self.time:
            opts.append(f"--time={self.time}")
        if self.after:
            opts += [f"--dependency=afterok:{':'.join(self.after)}", "--kill-on-invalid-dep=yes"]
        return [*opts, *self.extra]


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _slurm_memory(value: str) -> str:
    """`4GiB`, `512MB`, `1.5G` -> whole MiB, as sbatch takes them; what we cannot read goes as given."""
    try:
        return f"{-(-parse_memory(value) // (1 << 20))}M"
    except ValueError:
        return value
