"""The cluster schedulers a target can name in `default_scheduler`, and their launchers."""

from __future__ import annotations

from pathlib import Path

from ..user_config import TargetConfig
from .cluster import ClusterLauncher
from .commands import CommandRunner
from .sge import launcher as sge
from .slurm import launcher as slurm

CLUSTER_SCHEDULERS = ("slurm", "sge")
DISPLAY_NAMES = {"slurm": "SLURM", "sge": "Grid Engine"}


def cluster_launcher(scheduler: str, commands: CommandRunner, target: TargetConfig, tag: str,
                     cache: Path) -> ClusterLauncher:
    """The launcher for a target whose scheduler is one of CLUSTER_SCHEDULERS, from its
    `[targets.X.<scheduler>]` section; batch output goes under `cache/<scheduler>`."""
    module = {"slurm": slurm, "sge": sge}[scheduler]
    return module.launcher_for(commands, getattr(target, scheduler), tag, cache / scheduler)
