"""The analysis API under upstream's package name: `from repx_py import Experiment` works as with
upstream's repx-py (see repx_py.models)."""

from __future__ import annotations

import logging

from repxd import __version__

from .models import (
           ArtifactResolver,
           Experiment,
           JobCollection,
           JobView,
           LocalCacheResolver,
           ManifestResolver,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["ArtifactResolver", "Experiment", "JobCollection", "JobView", "LocalCacheResolver",
           "ManifestResolver", "__version__"]
