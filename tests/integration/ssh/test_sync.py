"""Bootstrap, Lab transfer and pull against the real test host, with the system rsync and ssh."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import missing

from repxd.targets.ssh.connection import SshConnection
from repxd.targets.ssh.sync import RemoteBase, SyncError
from repxd.user_config import SshSettings


@pytest.fixture
def remote(ssh_host, request):
    if os.system("command -v rsync >/dev/null") != 0:
        missing("rsync not installed (apt install rsync; .ci/run does)")
    connection = SshConnection("remote", "repx-remote", SshSettings(config_file=ssh_host.ssh_config))
    base = f"/home/{ssh_host.user}/{request.node.name}"
    return RemoteBase(connection, base)


def make_lab(root: Path, files: int = 20, size: int = 50_000) -> Path:
    """An artifacts tree shaped like a Lab: scripts (executable), data, a symlink."""
    for i in range(files):
        path = root / "jobs" / f"job{i:03d}" / "bin" / "run.sh"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"#!/bin/sh\n" + os.urandom(size))
        path.chmod(0o755)
    (root / "lab").mkdir(parents=True, exist_ok=True)
    (root / "lab" / "manifest.json").write_text('{"lab": 1}\n')
    (root / "current").symlink_to("lab/manifest.json")
    return root


def run(coroutine):
    return asyncio.run(coroutine)


def test_bootstrap_reports_the_remote(remote, ssh_host):
    info = run(remote.bootstrap(min_free_bytes=1))
    assert info.uname.split() == [os.uname().sysname, os.uname().machine]
    assert info.free_bytes > 0
    assert ssh_host.ssh(f"test -d {remote.base} && test -w {remote.base}", check=False).returncode == 0


def test_bootstrap_names_a_full_disk_and_an_unwritable_base(remote, ssh_host):
    disk = ssh_host.small_disk("1m")
    with pytest.raises(SyncError) as raised:
        run(RemoteBase(remote.connection, disk).bootstrap(min_free_bytes=64 << 20))
    assert str(raised.value).startswith(f"target 'remote': base path {disk}: remote disk full (")
    assert "\n" not in str(raised.value)
    with pytest.raises(SyncError, match=r"^target 'remote': base path /proc/repx cannot be created \("):
        run(RemoteBase(remote.connection, "/proc/repx").bootstrap())


def test_helpers_are_deployed_once_by_content(remote, ssh_host):
    first = run(remote.deploy_helper("status.sh", b"#!/bin/sh\necho v1\n"))
    again = run(remote.deploy_helper("status.sh", b"#!/bin/sh\necho v1\n"))
    other = run(remote.deploy_helper("status.sh", b"#!/bin/sh\necho v2\n"))
    assert first == again != other and first.startswith(f"{remote.base}/bin/")
    assert ssh_host.ssh(first).stdout == "v1\n" and ssh_host.ssh(other).stdout == "v2\n"
    # A fresh RemoteBase (a restarted repx) finds it there and writes nothing.
    fresh = RemoteBase(remote.connection, remote.base)
    assert run(fresh.deploy_helper("status.sh", b"#!/bin/sh\necho v1\n")) == first
    assert remote.connection.calls["put"] == 2


def test_sync_then_unchanged_resync_moves_almost_nothing(remote, ssh_host, tmp_path):
    lab = make_lab(tmp_path / "artifacts")
    lines = []
    first = run(remote.push_artifacts(lab, progress=lines.append))
    assert first.files_transferred == 21 and first.bytes_sent > first.total_size * 0.9
    listing = ssh_host.ssh(f"cd {remote.base}/artifacts/ && find . -printf '%p %y %m %l\\n' | sort").stdout
    assert "./current l 777 lab/manifest.json" in listing
    assert "./jobs/job007/bin/run.sh f 755 " in listing
    shown = [int(line.split("%")[0]) for line in lines]  # the progress display's updates
    assert shown == sorted(shown) and shown[-1] >= 99, lines
    second = run(remote.push_artifacts(lab))
    assert second.files_transferred == 0
    assert second.bytes_sent < 0.01 * second.total_size, second
    # One change: only it is sent, and the remote copy has it.
    (lab / "jobs" / "job003" / "bin" / "run.sh").write_bytes(b"#!/bin/sh\necho changed\n")
    third = run(remote.push_artifacts(lab))
    assert third.files_transferred == 1
    assert ssh_host.ssh(f"cat {remote.base}/artifacts/jobs/job003/bin/run.sh").stdout == "#!/bin/sh\necho changed\n"
    # Old stages are gone: one complete copy remains.
    assert len(ssh_host.ssh(f"ls {remote.base}/.artifacts").stdout.split()) == 1


def test_full_remote_disk_is_named_and_the_half_sent_lab_is_never_used(remote, ssh_host, tmp_path):
    disk = ssh_host.small_disk("1m")
    base = RemoteBase(remote.connection, disk)
    small = make_lab(tmp_path / "small", files=2, size=10_000)
    run(base.push_artifacts(small))
    before = ssh_host.ssh(f"cd {disk}/artifacts/ && find . -type f | sort && readlink {disk}/artifacts").stdout
    big = make_lab(tmp_path / "big", files=40, size=50_000)  # 2 MB into 1 MiB
    with pytest.raises(SyncError) as raised:
        run(base.push_artifacts(big))
    message = str(raised.value)
    assert message.startswith("target 'remote': ") and "\n" not in message
    assert "remote disk full (No space left on device)" in message and "rsync failed" in message
    after = ssh_host.ssh(f"cd {disk}/artifacts/ && find . -type f | sort && readlink {disk}/artifacts").stdout
    assert after == before, "artifacts must still be the last complete transfer"
    assert len(ssh_host.ssh(f"ls {disk}/.artifacts").stdout.split()) == 1, "the failed stage is removed"


def test_pull_fetches_outputs_incrementally(remote, ssh_host, tmp_path):
    ssh_host.ssh(f"mkdir -p {remote.base}/outputs/j1/out {remote.base}/outputs/j2/out {remote.base}/outputs/j3 && "
                 f"echo one > {remote.base}/outputs/j1/out/result.txt && "
                 f"head -c 100000 /dev/urandom > {remote.base}/outputs/j2/out/data.bin && "
                 f"ln -s data.bin {remote.base}/outputs/j2/out/link && echo three > {remote.base}/outputs/j3/x")
    local = tmp_path / "outputs"
    stats = run(remote.pull_outputs(["j1", "j2", "absent"], local))
    assert (local / "j1" / "out" / "result.txt").read_text() == "one\n"
    assert (local / "j2" / "out" / "link").readlink() == Path("data.bin")
    assert not (local / "j3").exists() and not (local / "absent").exists()
    assert stats.files_transferred == 2 and stats.bytes_received > 100_000
    again = run(remote.pull_outputs(["j1", "j2"], local))
    assert again.files_transferred == 0 and again.bytes_received < 2_000
