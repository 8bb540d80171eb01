"""Upstream repx-py's `repx_py.models`, served by repx's own analysis code (repxd.lab.analysis),
so notebooks written for upstream import and run unchanged.

Upstream's TypedDicts for raw metadata (JobData, RunMetadata, …) only annotate plain dicts; here
they are plain-dict aliases, since our metadata is validated by repxd.lab.schema instead."""

from __future__ import annotations

from typing import Any

from repxd.lab.analysis import (
    ArtifactResolver,
    Experiment,
    JobCollection,
    JobView,
    LocalCacheResolver,
    ManifestResolver,
)

ResourceHints = dict[str, Any]
ExecutableInfo = dict[str, Any]
JobData = dict[str, Any]
RunMetadata = dict[str, Any]
RootMetadata = dict[str, Any]
LabMetadata = dict[str, Any]

__all__ = [
    "ArtifactResolver", "ExecutableInfo", "Experiment", "JobCollection", "JobData", "JobView",
    "LabMetadata", "LocalCacheResolver", "ManifestResolver", "ResourceHints", "RootMetadata", "RunMetadata",
]
