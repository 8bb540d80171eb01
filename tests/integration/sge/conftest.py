"""The session's real Grid Engine (tests/sge_cluster.py): started once, stopped at the end.

This directory is a package so that this conftest is `sge.conftest`, not a second `conftest`
module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import pytest
from conftest import require_system, started_in_workdir
from sge_cluster import SgeCluster, missing_programs, start_cluster


@pytest.fixture(scope="session")
def sge_cluster() -> SgeCluster:
    # missing_programs() counts not being root as missing: qmaster and execd run as root here.
    require_system(missing_programs(), "apt install gridengine-master gridengine-exec gridengine-client, and run as root")
    with started_in_workdir(lambda workdir: start_cluster(workdir / "root"), "repx-sge-") as cluster:
        yield cluster
