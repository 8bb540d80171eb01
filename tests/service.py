"""Starting the daemon's roles as real processes for tests, on a private socket and ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    """A repxd configuration in its own directory and the role processes running it."""

    root: Path
    config: Path
    socket: Path
    base: Path
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    command_prefix: list[str] = field(default_factory=list)  # e.g. nsenter into another mount namespace

    @classmethod
    def create(cls, extra: str = "", lease: float = 15.0, heartbeat: float = 2.0, agent_id: str = "agent-1",
               tcp: bool = False, api_extra: str = "", jobs_as_daemon: bool = True, agent_extra: str = "") -> Daemon:
        """`extra` is TOML appended after the generated tables; `api_extra` and `agent_extra` are
        lines of [api] and [agent].
        `jobs_as_daemon`: the administrator's explicit consent to run jobs as the daemon's user,
        as these single-user test daemons (root submitting to root) need."""
        # Not under pytest's tmp_path: that is 0700, and the auth tests connect as other users.
        root = Path(tempfile.mkdtemp(prefix="repx-daemon-"))
        root.chmod(0o755)
        ports = {"scheduler": free_port(), "agent": free_port(), "api": free_port()}
        sock = root / "api.sock"
        base = root / "base"
        tcp_line = f'tcp = "127.0.0.1:{ports["api"]}"\n' if tcp else ""
        config = root / "repxd.toml"
        config.write_text(
            f'state_dir = "{root / "state"}"\nlog_level = "debug"\n'
            f'[api]\nsocket = "{sock}"\n{tcp_line}{api_extra}'
            f'[scheduler]\nmetrics = "127.0.0.1:{ports["scheduler"]}"\nlease_seconds = {lease}\npoll_interval = 0.05\nbackoff = 0.2\n'
            f'[agent]\nid = "{agent_id}"\nmetrics = "127.0.0.1:{ports["agent"]}"\nheartbeat_interval = {heartbeat}\n'
            + ("allow_jobs_as_daemon_user = true\n" if jobs_as_daemon else "") + agent_extra +
            f'[targets.local]\nbase_path = "{base}"\n' + extra)
        return cls(root, config, sock, base, ports)

    def start(self, role: str, name: str | None = None) -> subprocess.Popen:
        name = name or role
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([*self.command_prefix, "repxd", role, "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.processes[name] = proc
        if role in ("api", "all"):
            self.wait_for_api()
        return proc

    def wait_for_api(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://repx") as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/v1/health", timeout=1).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"the API did not come up; logs:\n{self.logs()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.kill()
            proc.wait(timeout=30)
        self.processes.clear()
