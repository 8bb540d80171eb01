"""The session's real SLURM cluster (tests/slurm_cluster.py): started once, stopped at the end.

This directory is a package so that this conftest is `slurm.conftest`, not a second `conftest`
module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import pytest
from conftest import require_system, started_in_workdir
from slurm_cluster import SlurmCluster, missing_programs, start_cluster


@pytest.fixture(scope="session")
def slurm_programs() -> None:
    """Skip (fail in CI) where the cluster cannot run: programs missing or not root."""
    require_system(missing_programs(), "apt install slurm-wlm slurmdbd mariadb-server munge",
                   root_because="the SLURM test cluster runs munged, MariaDB and the SLURM daemons as root")


@pytest.fixture(scope="session")
def slurm_cluster(slurm_programs) -> SlurmCluster:
    with started_in_workdir(start_cluster, "repx-slurm-") as cluster:
        yield cluster
