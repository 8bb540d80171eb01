"""Daemon hygiene (issue 15): a stopped daemon takes its socket with it, a stale socket is named
as such, `repxctl status` says which daemon it talks to, a personal daemon follows the user's XDG
paths (root in a login session too) and binds no fixed TCP port, and `repxd all` serves every
role's metrics on its socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cli import repxctl
from service import Daemon

from repxd.service.daemon_config import SYSTEM_SOCKET


def stale_socket(path: Path) -> Path:
    """A socket file nobody listens on: what a killed daemon leaves behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    return path


def get(sock: Path, path: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://repx") as client:
        return client.get(path, timeout=5)


def test_sigterm_removes_the_socket_and_status_names_the_daemon():
    daemon = Daemon.create()
    daemon.start("all")
    try:
        status = repxctl("status", "--api", daemon.socket)
        assert status.code == 0, status.stderr
        assert status.stdout.splitlines()[0].split() == ["daemon", str(daemon.socket)]
        assert repxctl("status", "--json", "--api", daemon.socket).json()["api"] == str(daemon.socket)
        daemon.kill("all", signal.SIGTERM)
        assert not daemon.socket.exists()
        gone = repxctl("status", "--api", daemon.socket)
        assert gone.code != 0 and str(daemon.socket) in gone.stderr and "no such socket" in gone.stderr
    finally:
        daemon.stop()


def test_a_stale_socket_is_named_and_not_silently_skipped(tmp_path):
    if SYSTEM_SOCKET.exists():
        pytest.skip(f"{SYSTEM_SOCKET} exists on this host; repxctl would try it first")
    runtime = tmp_path / "run"
    sock = stale_socket(runtime / "repx" / "api.sock")
    env = {k: v for k, v in os.environ.items() if k != "REPX_API"} | {"XDG_RUNTIME_DIR": str(runtime)}
    for command in (["status"], ["jobs"], ["runs"]):
        result = repxctl(*command, env=env)
        assert result.code != 0, result.stdout
        assert f"no repx daemon is listening on {sock}" in result.stderr and "not running" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_daemon_replaces_a_stale_socket():
    daemon = Daemon.create()
    stale_socket(daemon.socket)
    daemon.start("all")  # waits until the new daemon answers on that path
    daemon.stop()


def test_a_second_daemon_on_a_live_socket_is_refused(tmp_path):
    daemon = Daemon.create()
    daemon.start("all")
    try:
        config = tmp_path / "other.toml"
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n[api]\nsocket = "{daemon.socket}"\n')
        other = subprocess.run(["repxd", "all", "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert other.returncode == 2, other.stderr
        assert f"another repx daemon is listening on {daemon.socket}" in other.stderr
        assert get(daemon.socket, "/v1/health").status_code == 200
    finally:
        daemon.stop()


def personal_daemon(home: Path) -> tuple[subprocess.Popen, Path, Path]:
    """`repxd all` with no paths configured and the XDG variables of a login session."""
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    env |= {"XDG_RUNTIME_DIR": str(home / "run"), "XDG_STATE_HOME": str(home / "state"), "HOME": str(home)}
    (home / "run").mkdir(parents=True)
    config = home / "repxd.toml"
    config.write_text('log_level = "debug"\n[agent]\nallow_jobs_as_daemon_user = true\n')
    log = open(home / "repxd.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(["repxd", "all", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    sock = home / "run" / "repx" / "api.sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (home / "repxd.log").read_text()
        time.sleep(0.05)
    return proc, sock, home / "state" / "repx" / "daemon"


def test_personal_daemons_follow_xdg_and_bind_no_fixed_port(tmp_path):
    """Two users' (here: two sessions') personal daemons, root's included, run side by side."""
    procs = []
    try:
        first, sock_a, state_a = personal_daemon(tmp_path / "a")
        procs.append(first)
        second, sock_b, state_b = personal_daemon(tmp_path / "b")
        procs.append(second)
        for sock, state in ((sock_a, state_a), (sock_b, state_b)):
            deadline = time.monotonic() + 30
            while True:
                try:
                    if get(sock, "/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert (state / "state.db").exists()
            metrics = get(sock, "/metrics").text
            # Every role's metrics on the socket: the API's, the scheduler's and the agent's.
            for name in ("repx_api_requests_total", "repx_ready_queue_depth", "repx_agent_running_jobs"):
                assert name in metrics, name
        assert first.poll() is None and second.poll() is None
        listening = {row.split()[9] for table in ("/proc/net/tcp", "/proc/net/tcp6")
                     for row in Path(table).read_text().splitlines()[1:] if row.split()[3] == "0A"}  # 0A: LISTEN
        for proc in procs:
            fds = Path(f"/proc/{proc.pid}/fd")
            inodes = {os.readlink(fd).removeprefix("socket:[").rstrip("]") for fd in fds.iterdir()
                      if os.readlink(fd).startswith("socket:[")}
            assert not inodes & listening, "a personal daemon listens on a TCP port"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert not sock_a.exists() and not sock_b.exists()
