"""Cluster helpers for the NixOS VM tests: agents as the API host sees them, draining, and where
a job ran. Like tests/system/scenarios.py, they take machines with the NixOS test driver's
interface and use only what an operator would type. Standard library only."""

from __future__ import annotations

import json
import time

BASE = "/var/lib/repx/work"


def poll(check, timeout: float, what: str, interval: float = 1.0):
    """Call `check()` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def server_ready(server) -> None:
    """An API + scheduler host: both units up (Type=notify, so after READY=1), TCP port open."""
    server.wait_for_unit("repx.target")
    for unit in ("repx-api.service", "repx-scheduler.service"):
        server.wait_for_unit(unit)
    server.wait_for_open_port(8420)
    state = server.succeed("systemctl is-enabled repx-agent.service || true").strip()
    assert state == "masked", f"the agent role is disabled on the server, but repx-agent.service is {state}"


def agents(server) -> dict[str, dict]:
    return {a["id"]: a for a in json.loads(server.succeed("repxctl agents --json"))}


def wait_for_agents(server, names, state: str = "active", timeout: float = 120) -> dict[str, dict]:
    def check():
        seen = agents(server)
        return seen if all(seen.get(n, {}).get("state") == state for n in names) else None

    return poll(check, timeout, f"agents {', '.join(names)} to be {state}")


def drain(server, name: str) -> None:
    out = server.succeed(f"repxctl agents drain {name}")
    assert "draining" in out, out
    assert agents(server)[name]["state"] == "draining"


def undrain(server, name: str) -> None:
    server.succeed(f"repxctl agents undrain {name}")
    assert agents(server)[name]["state"] == "active"


def wait_running_on(server, name: str, timeout: float = 120) -> None:
    poll(lambda: agents(server)[name]["running"] > 0, timeout, f"a job running on {name}")


def ran_here(agent, job_id: str) -> None:
    """The job's outputs, with its SUCCESS marker, are on this agent's base path."""
    agent.succeed(f"test -e {BASE}/outputs/{job_id}/repx/SUCCESS")


def never_ran_here(agent, job_id: str) -> None:
    agent.fail(f"test -e {BASE}/outputs/{job_id}")
