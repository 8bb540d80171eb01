"""The session's real SLURM cluster (tests/slurm_cluster.py): started once, stopped at the end.

This directory is a package so that this conftest is `slurm.conftest`, not a second
`conftest` module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import os

import pytest
from conftest import missing
from slurm_cluster import SlurmCluster, missing_programs, start_cluster


@pytest.fixture(scope="session")
def slurm_programs() -> None:
    """Skip (fail in CI) where the cluster cannot run: programs missing or not root."""
    lacking = missing_programs()
    if lacking:
        missing(f"{', '.join(lacking)} not installed (apt install slurm-wlm slurmdbd mariadb-server munge; "
                ".ci/run does)")
    if os.geteuid() != 0:
        missing("the SLURM test cluster runs munged, MariaDB and the SLURM daemons as root")


@pytest.fixture(scope="session")
def slurm_cluster(slurm_programs, tmp_path_factory) -> SlurmCluster:
    cluster = start_cluster(tmp_path_factory.mktemp("slurm-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
