"""Lab definition: models, loading, graph, writer and the analysis API.

The analysis names (`from repxd.lab import Experiment`) are imported on first use, so importing
`repxd.lab` stays light (no pydantic models loaded, no pandas ever)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analysis import (
        ArtifactResolver,
        Experiment,
        JobCollection,
        JobView,
        LocalCacheResolver,
        ManifestResolver,
    )

__all__ = [
    "ArtifactResolver",
    "Experiment",
    "JobCollection",
    "JobView",
    "LocalCacheResolver",
    "ManifestResolver",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
