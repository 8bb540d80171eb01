"""The session's real Grid Engine (tests/sge_cluster.py): started once, stopped at the end.

This directory is a package so that this conftest is `sge.conftest`, not a second `conftest`
module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import missing
from sge_cluster import SgeCluster, missing_programs, start_cluster


@pytest.fixture(scope="session")
def sge_cluster() -> SgeCluster:
    lacking = missing_programs()
    if lacking:
        missing(f"{', '.join(lacking)} missing (apt install gridengine-master gridengine-exec gridengine-client "
                "and run as root; .ci/run does)")
    workdir = Path(tempfile.mkdtemp(prefix="repx-sge-"))
    workdir.chmod(0o755)
    try:
        cluster = start_cluster(workdir / "root")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
