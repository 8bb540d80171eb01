"""Cluster helpers for the NixOS VM tests: agents as the API host sees them, draining, and where
a job ran. Like tests/system/scenarios.py, they take machines with the NixOS test driver's
interface (typed with the driver's classes, as there) and use only what an operator would type.
Standard library only at run time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from test_driver.machine import BaseMachine

T = TypeVar("T")

BASE = "/var/lib/repx/work"


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    """Call `check()` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def server_ready(server: BaseMachine) -> None:
    """An API + scheduler host: both units up (Type=notify, so after READY=1), TCP port open."""
    server.wait_for_unit("repx.target")
    for unit in ("repx-api.service", "repx-scheduler.service"):
        server.wait_for_unit(unit)
    server.wait_for_open_port(8420)
    state = server.succeed("systemctl is-enabled repx-agent.service || true").strip()
    assert state == "masked", f"the agent role is disabled on the server, but repx-agent.service is {state}"


def agents(server: BaseMachine) -> dict[str, dict[str, Any]]:
    return {a["id"]: a for a in json.loads(server.succeed("repxctl agents --json"))}


def wait_for_agents(server: BaseMachine, names: list[str], state: str = "active",
                    timeout: float = 120) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        seen = agents(server)
        return seen if all(seen.get(n, {}).get("state") == state for n in names) else None

    return poll(check, timeout, f"agents {', '.join(names)} to be {state}")


def drain(server: BaseMachine, name: str) -> None:
    out = server.succeed(f"repxctl agents drain {name}")
    assert "draining" in out, out
    assert agents(server)[name]["state"] == "draining"


def undrain(server: BaseMachine, name: str) -> None:
    server.succeed(f"repxctl agents undrain {name}")
    assert agents(server)[name]["state"] == "active"


def wait_running_on(server: BaseMachine, name: str, timeout: float = 120) -> None:
    poll(lambda: agents(server)[name]["running"] > 0 or None, timeout, f"a job running on {name}")


def ran_here(agent: BaseMachine, job_id: str) -> None:
    """The job's outputs, with its SUCCESS marker, are on this agent's base path."""
    agent.succeed(f"test -e {BASE}/outputs/{job_id}/repx/SUCCESS")


def never_ran_here(agent: BaseMachine, job_id: str) -> None:
    agent.fail(f"test -e {BASE}/outputs/{job_id}")
