"""Labs with images on the SSH target: layers sent content-addressed and only when missing there,
the jobs run under bwrap on the host, the image extracted under node_local_path."""

from __future__ import annotations

import asyncio
import shutil

from cli import repxctl
from service import Daemon

from repxd.engine.embedded import base_path_for, open_lab, resolve_target
from repxd.exec.artifacts import sync_artifacts
from repxd.exec.layout import OutputLayout
from repxd.lab.writer import ImageSpec, LabWriter
from repxd.targets.ssh.target import SshTarget
from repxd.user_config import load_config

from . import test_ssh_target
from .test_ssh_target import local_out_files

remote = test_ssh_target.remote  # the fixture: the SSH test host as target `remote`

# What only the image has, what the job computes, and what its inputs say.
PROBE = """#!/bin/sh
set -eu
out="$1"
{
  cat /etc/repx-test-image
  [ -e /etc/debian_version ] && echo "host-root" || echo "image-root"
  echo "$(( $(echo 6) * 7 ))"
} > "$out/probe.txt"
"""


def image_lab(dest, rootfs, script: str = PROBE, variant: int = 1):
    writer = LabWriter(git_hash="1a6e1a6e" * 5)
    writer.run("probe", image=ImageSpec(rootfs, "localhost/repx-busybox:test")).job(
        "probe", script, params={"variant": variant}, outputs={"probe": "$out/probe.txt"})
    return writer.write(dest)


def bwrap_config(remote, path, node_local: str):
    text = remote.config.read_text().replace(
        'default_scheduler = "local"\n',
        f'default_scheduler = "local"\ndefault_execution_type = "bwrap"\nnode_local_path = "{node_local}"\n'
    ).replace("[targets.remote.local]\n", '[targets.remote.local]\nexecution_types = ["bwrap", "native"]\n')
    path.write_text(text)
    return path


def push(remote, config, lab_path, monkeypatch):
    """The Lab's push to the target, as a run makes it: the statistics of its phase 3 (images)."""
    for key in ("HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, remote.env[key])
    name, target = resolve_target(load_config(config), "remote")
    base = base_path_for(target, None, name)
    lab = open_lab(lab_path, base)
    layout = OutputLayout(base)
    sync_artifacts(lab, layout)
    ssh = SshTarget(name, target, layout)

    async def go():
        try:
            await ssh.open()
            await ssh.push_lab(lab, list(lab.jobs))
        finally:
            await ssh.close()

    asyncio.run(go())
    return ssh.remote.image_stats


def test_an_image_lab_runs_under_bwrap_on_the_remote_and_layers_go_once(remote, tmp_path, busybox_rootfs,
                                                                         monkeypatch):
    node_local = f"/home/{remote.host.user}/{tmp_path.name}-node"
    config = bwrap_config(remote, tmp_path / "bwrap.toml", node_local)
    lab = image_lab(tmp_path / "lab", busybox_rootfs)
    result = repxctl("run", "probe", "--lab", lab, "--target", "remote", "--config", config, "--json", env=remote.env)
    assert result.code == 0, result.stderr + result.stdout
    assert result.json()["executed"] == 1

    local = repxctl("run", "probe", "--lab", lab, "--base-path", tmp_path / "local", "--runtime", "bwrap", "--json")
    assert local.code == 0, local.stderr
    expected = local_out_files(tmp_path / "local" / "outputs")
    assert remote.out_files() == expected
    (probe,) = (tmp_path / "local" / "outputs").glob("*/out/probe.txt")
    assert probe.read_text().splitlines() == ["busybox", "image-root", "42"]

    # Upstream's layout: each layer once in artifacts/store, the image's layer paths linking there;
    # the root filesystem extracted under the node-local path.
    store = remote.host.ssh(f"ls {remote.base}/artifacts/store").stdout.split()
    assert len(store) == 1 and store[0].endswith("-layer.tar")
    links = remote.host.ssh(f"find {remote.base}/artifacts/images/ -name layer.tar -type l").stdout.split()
    assert len(links) == 1
    assert remote.host.ssh(f"ls {node_local}/repx/cache/images/*/rootfs/etc/repx-test-image", check=False).returncode == 0

    # Another Lab with the same image: its layer is on the remote already, so no layer byte goes.
    other = image_lab(tmp_path / "other", busybox_rootfs, PROBE.replace("* 7", "* 8"), variant=2)
    layer_bytes = sum(p.stat().st_size for p in (other / "images").rglob("layer.tar"))
    stats = push(remote, config, other, monkeypatch)
    assert stats is not None and stats.files_transferred == 0
    assert stats.bytes_sent < layer_bytes / 20, (stats, layer_bytes)
    again = repxctl("run", "probe", "--lab", other, "--target", "remote", "--config", config, "--json", env=remote.env)
    assert again.code == 0, again.stderr + again.stdout
    assert again.json()["executed"] == 1
    outputs = remote.host.ssh(f"cat {remote.base}/outputs/*/out/probe.txt").stdout.splitlines()
    assert sorted(outputs) == sorted(["busybox", "image-root", "42", "busybox", "image-root", "48"])


def test_a_changed_image_sends_its_new_layer_only(remote, tmp_path, busybox_rootfs, monkeypatch):
    config = bwrap_config(remote, tmp_path / "bwrap.toml", f"/home/{remote.host.user}/{tmp_path.name}-node")
    first = push(remote, config, image_lab(tmp_path / "lab", busybox_rootfs), monkeypatch)
    assert first.files_transferred >= 1
    changed = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, changed, symlinks=True)
    (changed / "etc" / "repx-test-image").write_text("changed\n")
    second = push(remote, config, image_lab(tmp_path / "changed", changed), monkeypatch)
    new_layer = sum(p.stat().st_size for p in (tmp_path / "changed" / "images").rglob("layer.tar"))
    assert second.files_transferred >= 1 and second.bytes_sent >= new_layer * 0.5
    assert len(remote.host.ssh(f"ls {remote.base}/artifacts/store").stdout.split()) == 2


def test_the_daemon_runs_an_image_lab_on_the_remote(remote, tmp_path, busybox_rootfs):
    config = bwrap_config(remote, tmp_path / "bwrap.toml", f"/home/{remote.host.user}/{tmp_path.name}-node")
    daemon = Daemon.create(extra=config.read_text())
    daemon.env = remote.env
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        lab = image_lab(tmp_path / "lab", busybox_rootfs)
        result = repxctl("run", "probe", "--lab", lab, "--target", "remote", "--json", env=env, timeout=120)
        assert result.code == 0, result.stderr + daemon.logs()
        assert result.json()["state"] == "succeeded", result.stdout + daemon.logs()
        outputs = remote.host.ssh(f"cat {remote.base}/outputs/*/out/probe.txt").stdout.splitlines()
        assert outputs == ["busybox", "image-root", "42"]
    finally:
        daemon.stop()
