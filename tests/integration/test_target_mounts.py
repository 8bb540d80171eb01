"""A target's mount_paths / mount_host_paths / node_local_path, run for real in bubblewrap and podman.

Upstream (repx-executor runtime/bwrap.rs and runtime/container.rs): `mount_paths` binds each listed
host path at the same place, writable; `mount_host_paths` gives bwrap the host's own top-level
directories instead of the image (home, tmp, var, opt, srv, mnt, media, run writable; the rest
read-only) and gives containers /home, /tmp, /var, /opt, /run, /media, /mnt; `node_local_path`
holds the extracted images (`<node_local_path>/repx/cache/images`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import repxctl
from conftest import require_program

from repxd.lab.writer import ImageSpec, LabWriter

PROBE = """#!/bin/sh
set -u
out="$1"
{
  [ -e /etc/repx-test-image ] && echo "image-root" || echo "host-root"
  cat "$SHARED/in.txt" 2>/dev/null || echo "no-shared"
  echo written > "$SHARED/from-job.txt" 2>/dev/null && echo "shared-writable" || echo "shared-readonly"
} > "$out/probe.txt"
"""


def probe_lab(tmp_path: Path, rootfs: Path, shared: Path) -> Path:
    writer = LabWriter()
    writer.run("probe", image=ImageSpec(rootfs, "localhost/repx-busybox:test")).job(
        "probe", PROBE.replace("$SHARED", str(shared)), outputs={"probe": "$out/probe.txt"})
    return writer.write(tmp_path / "lab")


def run_probe(tmp_path: Path, rootfs: Path, runtime: str, target_lines: str, env=None) -> list[str]:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("host-data\n")
    lab = probe_lab(tmp_path, rootfs, shared)
    base = tmp_path / "base"
    config = tmp_path / "config.toml"
    config.write_text(f'[targets.local]\nbase_path = "{base}"\ndefault_scheduler = "local"\n'
                      f'default_execution_type = "{runtime}"\n'
                      + target_lines.replace("SHARED", str(shared))
                      + f'[targets.local.local]\nexecution_types = ["{runtime}"]\n')
    result = repxctl("run", "probe", "--lab", lab, "--config", config, env=env)
    assert result.code == 0, result.stderr
    (probe,) = (base / "outputs").glob("*/out/probe.txt")
    return probe.read_text().splitlines()


def test_bwrap_isolated_by_default(tmp_path, busybox_rootfs):
    require_program("bwrap")
    assert run_probe(tmp_path, busybox_rootfs, "bwrap", "") == ["image-root", "no-shared", "shared-readonly"]
    assert not (tmp_path / "shared" / "from-job.txt").exists()


def test_bwrap_mount_paths_binds_them_writable(tmp_path, busybox_rootfs):
    require_program("bwrap")
    lines = run_probe(tmp_path, busybox_rootfs, "bwrap", 'mount_paths = ["SHARED"]\n')
    assert lines == ["image-root", "host-data", "shared-writable"]
    assert (tmp_path / "shared" / "from-job.txt").read_text() == "written\n"


def test_bwrap_mount_host_paths_runs_on_the_host_tree(tmp_path, busybox_rootfs):
    require_program("bwrap")
    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip("the probe's shared directory must be under /tmp, a writable host directory")
    lines = run_probe(tmp_path, busybox_rootfs, "bwrap", "mount_host_paths = true\n")
    assert lines == ["host-root", "host-data", "shared-writable"]


def test_bwrap_images_live_under_node_local_path(tmp_path, busybox_rootfs):
    require_program("bwrap")
    node_local = tmp_path / "node-local"
    lines = run_probe(tmp_path, busybox_rootfs, "bwrap", f'node_local_path = "{node_local}"\n')
    assert lines[0] == "image-root"
    assert list(node_local.glob("repx/cache/images/*/rootfs/etc/repx-test-image"))
    assert not list((tmp_path / "base").glob("cache/images/*/rootfs"))


def test_podman_mount_paths_binds_them(tmp_path, busybox_rootfs, podman_env):
    lines = run_probe(tmp_path, busybox_rootfs, "podman", 'mount_paths = ["SHARED"]\n', env=podman_env)
    assert lines == ["image-root", "host-data", "shared-writable"]


def test_podman_isolated_by_default(tmp_path, busybox_rootfs, podman_env):
    lines = run_probe(tmp_path, busybox_rootfs, "podman", "", env=podman_env)
    assert lines[:2] == ["image-root", "no-shared"]


def test_podman_mount_host_paths_shares_the_host_directories(tmp_path, busybox_rootfs, podman_env):
    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip("the probe's shared directory must be under /tmp, one of the shared host directories")
    lines = run_probe(tmp_path, busybox_rootfs, "podman", "mount_host_paths = true\n", env=podman_env)
    assert lines == ["image-root", "host-data", "shared-writable"]


@pytest.mark.parametrize(("target_lines", "words"), [
    ('mount_paths = ["/no/such/dir"]\n', ["mount_paths", "'/no/such/dir'", "create it or remove it"]),
    ('mount_paths = ["relative/dir"]\n', ["mount_paths", "'relative/dir'", "absolute"]),
])
def test_bad_mount_path_is_one_line_exit_2(tmp_path, busybox_rootfs, target_lines, words):
    require_program("bwrap")
    lab = probe_lab(tmp_path, busybox_rootfs, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(f'[targets.local]\nbase_path = "{tmp_path / "base"}"\ndefault_scheduler = "local"\n'
                      'default_execution_type = "bwrap"\n' + target_lines + '[targets.local.local]\nexecution_types = ["bwrap"]\n')
    result = repxctl("run", "probe", "--lab", lab, "--config", config)
    (error,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.code == 2 and error.startswith("repxctl: error: "), result.stderr
    for word in words:
        assert word in error
    assert not list((tmp_path / "base").glob("outputs/*/out/probe.txt"))


def test_relative_base_path_is_one_line_exit_2(tmp_path, busybox_rootfs):
    lab = probe_lab(tmp_path, busybox_rootfs, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text('[targets.local]\nbase_path = "work"\ndefault_scheduler = "local"\n')
    result = repxctl("run", "probe", "--lab", lab, "--config", config, cwd=tmp_path)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "base_path 'work' is relative" in result.stderr
    assert not (tmp_path / "work").exists()
