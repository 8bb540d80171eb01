"""The SSH test host itself: reachable with its key only, isolated, cuttable, fillable, stoppable."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import missing
from ssh_host import ALIAS, SshHost, alive, remove_stale, start_ssh_host


def _ssh(host: SshHost, *options: str, command: str = "true") -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(host.ssh_config), *options, ALIAS, command],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


def test_runs_commands_as_the_test_user(ssh_host):
    result = ssh_host.ssh("id -un; echo $HOME; uname -s")
    assert result.stdout.split() == [ssh_host.user, f"/home/{ssh_host.user}", "Linux"]
    assert ssh_host.address == f"{ssh_host.user}@{ssh_host.host}"


def test_unknown_host_key_is_refused(ssh_host, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = _ssh(ssh_host, "-o", f"UserKnownHostsFile={empty}")
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_remote_cannot_see_the_local_checkout(ssh_host):
    local = Path(__file__).parent
    assert local.is_dir()
    result = ssh_host.ssh(f"ls {local}", check=False)
    assert result.returncode != 0
    assert "No such file or directory" in result.stderr
    assert ssh_host.ssh("ls -A /tmp").stdout == ""


def test_rsync_round_trip(ssh_host, tmp_path):
    if shutil.which("rsync") is None:
        missing("rsync is not installed (apt install rsync; .ci/run does)")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.txt").write_text("payload\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    rsh = f"ssh -F {ssh_host.ssh_config}"
    subprocess.run(["rsync", "-a", "-e", rsh, f"{source}/", f"{ALIAS}:copy/"], check=True,
                   capture_output=True, timeout=60)
    assert ssh_host.ssh("cat copy/sub/data.txt; test -x copy/run.sh && echo exec").stdout == "payload\nexec\n"
    back = tmp_path / "back"
    subprocess.run(["rsync", "-a", "-e", rsh, f"{ALIAS}:copy/", f"{back}/"], check=True,
                   capture_output=True, timeout=60)
    assert (back / "sub" / "data.txt").read_text() == "payload\n"
    assert (back / "run.sh").stat().st_mode & 0o111


def test_cut_link_fails_new_connections_and_keeps_a_session(ssh_host):
    session = subprocess.Popen(
        ["ssh", "-F", str(ssh_host.ssh_config), ALIAS, "read line; echo got $line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)  # the session is established before the cut
    ssh_host.cut_link()
    try:
        started = time.monotonic()
        refused = _ssh(ssh_host)
        assert refused.returncode == 255
        assert "No route to host" in refused.stderr or "Network is unreachable" in refused.stderr
        assert time.monotonic() - started < 5  # fails at once, not after a timeout
        time.sleep(5 - (time.monotonic() - started))
    finally:
        ssh_host.restore_link()
    out, err = session.communicate("hello\n", timeout=30)
    assert (session.returncode, out) == (0, "got hello\n"), err
    assert ssh_host.ssh("echo back").stdout == "back\n"


def test_small_disk_fills_with_enospc(ssh_host):
    path = ssh_host.small_disk("1m")
    assert ssh_host.ssh(f"stat -c %U {path}").stdout.strip() == ssh_host.user
    result = ssh_host.ssh(f"dd if=/dev/zero of={path}/fill bs=64k count=64", check=False)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    assert int(ssh_host.ssh("df -k $HOME | tail -1 | awk '{print $4}'").stdout) > 1024  # home unaffected


def test_no_systemd_user_manager_on_the_remote(ssh_host):
    """Detached remote work needs setsid + a pid file: there is no `systemd-run --user`."""
    assert ssh_host.ssh("systemd-run --user true", check=False).returncode != 0
    started = ssh_host.ssh("setsid nohup sleep 30 >/dev/null 2>&1 < /dev/null & echo $! > sleeper.pid")
    assert started.returncode == 0
    assert ssh_host.ssh("kill -0 $(cat sleeper.pid) && kill $(cat sleeper.pid) && echo alive").stdout == "alive\n"


def test_stop_leaves_nothing_behind():
    """A second, private host: stop() removes sshd, its sessions, namespace, link and user."""
    if os.geteuid() != 0:
        missing("the SSH test host needs root")
    workdir = Path(tempfile.mkdtemp(prefix="repx-ssh-stop-", dir="/var/tmp"))
    try:
        host = start_ssh_host(workdir)
        try:
            host.ssh("setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null &")
            sshd, uid = host.sshd_pid, pwd.getpwnam(host.user).pw_uid
            assert sshd is not None
            deadline = time.monotonic() + 20  # setsid and nohup exec into sleep after the ssh session returns
            while subprocess.run(["pgrep", "-U", str(uid), "sleep"], capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, "the detached sleep never started on the host"
                time.sleep(0.1)
        finally:
            host.stop()
        assert not alive(sshd)
        leftover = subprocess.run(["pgrep", "-U", str(uid)], capture_output=True, text=True).stdout.split()
        assert [pid for pid in leftover if alive(int(pid))] == []
        assert host.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", host.veth], capture_output=True).returncode != 0
        with pytest.raises(KeyError):
            pwd.getpwnam(host.user)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_killed_test_process_takes_sshd_along_and_next_start_cleans_up(tmp_path):
    """kill -9 of the process that started the host: sshd dies at once (parent-death signal and
    --kill-child); its namespace, link and user are removed by the next start."""
    if os.geteuid() != 0:
        missing("the SSH test host needs root")
    workdir = Path(tempfile.mkdtemp(prefix="repx-ssh-kill-", dir="/var/tmp"))
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
              "from ssh_host import start_ssh_host\n"
              "h = start_ssh_host(Path(sys.argv[2]))\n"
              "print(h.sshd_pid, h.netns, h.veth, h.user, flush=True); time.sleep(300)\n")
    owner = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parents[2]), str(workdir)],
                             stdout=subprocess.PIPE, text=True)
    try:
        sshd, netns, veth, user = owner.stdout.readline().split()
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        while alive(int(sshd)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(int(sshd))
        remove_stale()
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
    finally:
        owner.kill()
        shutil.rmtree(workdir, ignore_errors=True)
