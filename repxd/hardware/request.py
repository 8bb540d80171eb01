"""How many GPUs a job asks for: `gpus = N` (resource hints or resources.toml), `--gres=gpu:N`,
`--gres=gpu:TYPE:N` or `--gpus=N` in `sbatch_opts`; `gpu = "optional"` runs on a CPU when no GPU
is free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuRequest:
    count: int = 0
    optional: bool = False


def _from_sbatch(opts: list[str]) -> int | None:
    count = None
    tokens = list(opts)
    for i, token in enumerate(tokens):
        for flag in ("--gres", "--gpus"):
            value = None
            if token.startswith(flag + "="):
                value = token[len(flag) + 1:]
            elif token == flag and i + 1 < len(tokens):
                value = tokens[i + 1]
            if value is None:
                continue
            if flag == "--gpus":  # --gpus=N or --gpus=TYPE:N
                last = value.rsplit(":", 1)[-1]
                count = int(last) if last.isdigit() else count
                continue
            for item in value.split(","):  # --gres=gpu:2,shard:1; gpu[:type][:count]
                parts = item.strip().split(":")
                if parts[0] == "gpu":
                    count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return count


def gpu_request(resources: dict[str, Any]) -> GpuRequest:
    """From a job's merged resources (user_config.Resources.for_job)."""
    mode = resources.get("gpu")
    count = resources.get("gpus")
    if count is None:
        count = _from_sbatch([str(o) for o in resources.get("sbatch_opts") or []])
    if count is None:
        count = 1 if mode in ("optional", "required") else 0
    return GpuRequest(int(count), mode == "optional" and int(count) > 0)
