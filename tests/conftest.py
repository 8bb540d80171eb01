"""Shared fixtures: real programs (bwrap, podman, graphviz), a busybox image, example Labs.

A test needing a program that is missing skips with one line; with REPX_REQUIRE_SYSTEM_TESTS=1
(CI) it fails instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "labs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REQUIRE_SYSTEM = os.environ.get("REPX_REQUIRE_SYSTEM_TESTS") == "1"
T = TypeVar("T")


def missing(message: str) -> NoReturn:
    """Skip for what this host lacks, or fail when REPX_REQUIRE_SYSTEM_TESTS=1 (CI)."""
    if REQUIRE_SYSTEM:
        pytest.fail(f"REPX_REQUIRE_SYSTEM_TESTS=1 but {message}")
    pytest.skip(message)


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt install it; .ci/run does)")
    return path


def require_system(lacking: list[str], install: str, root_because: str | None = None) -> None:
    """For a fixture that starts real system services: the programs it lacks (with the apt line
    that installs them) and, when it needs root, why."""
    if lacking:
        missing(f"{', '.join(lacking)} not installed ({install}; .ci/run does)")
    if root_because is not None and os.geteuid() != 0:
        missing(root_because)


@contextmanager
def started_in_workdir(start: Callable[[Path], T], prefix: str, under: str | None = None) -> Iterator[T]:
    """`start(workdir)` in a fresh directory readable by every user (pytest's tmp_path is 0700,
    and a cluster's users read its configuration), then `.stop()` and the directory removed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    workdir.chmod(0o755)
    try:
        started = start(workdir)
        try:
            yield started
        finally:
            started.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def daemon():
    """A `repxd all` of its own (tests/service.py), stopped after the test."""
    from service import Daemon

    d = Daemon.create()
    d.start("all")
    yield d
    d.stop()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """A minimal root filesystem: static busybox and its applet links."""
    busybox = Path(require_program("busybox")).resolve()
    check = subprocess.run(["file", "-b", str(busybox)], capture_output=True, text=True)
    if check.returncode == 0 and "dynamically linked" in check.stdout:
        pytest.fail(f"{busybox} is dynamically linked; install busybox-static")
    rootfs = tmp_path_factory.mktemp("busybox-rootfs")
    (rootfs / "bin").mkdir()
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "repx-test-image").write_text("busybox\n")
    return rootfs


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory) -> dict[str, str]:
    """Environment for podman on this machine: runc (crun rejects its hybrid cgroups) and no
    default ulimits (root lacks CAP_SYS_RESOURCE here). Real hosts need neither."""
    require_program("podman")
    require_program("runc")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(conf)
    return env
