"""The session's real SLURM cluster (tests/slurm_cluster.py): started once, stopped at the end.

This directory is a package so that this conftest is `slurm.conftest`, not a second
`conftest` module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

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
def slurm_cluster(slurm_programs) -> SlurmCluster:
    # Not under pytest's tmp_path (mode 0700): users other than root read slurm.conf and
    # reach munge's socket, as on a real cluster.
    workdir = Path(tempfile.mkdtemp(prefix="repx-slurm-"))
    workdir.chmod(0o755)
    try:
        cluster = start_cluster(workdir)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
