"""Prometheus as a user of repx's metrics sees them: PromQL over the HTTP API."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from .cluster import poll

if TYPE_CHECKING:
    from test_driver.machine import BaseMachine

PROMETHEUS = "http://127.0.0.1:9090"


def query(machine: BaseMachine, promql: str) -> list[dict[str, Any]]:
    out = machine.succeed(f"curl -sf --get --data-urlencode query={shlex.quote(promql)} {PROMETHEUS}/api/v1/query")
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def roles_are_scraped(machine: BaseMachine, roles: list[str], timeout: float = 180) -> dict[str, str]:
    """`up` is 1 for every role's target of the repx scrape job."""

    def check() -> dict[str, str] | None:
        up = {r["metric"].get("role"): r["value"][1] for r in query(machine, 'up{job=~"repx-.*"}')}
        return up if all(up.get(role) == "1" for role in roles) else None

    return poll(check, timeout, f"Prometheus to scrape the roles {', '.join(roles)}", interval=2)


def value_at_least(machine: BaseMachine, promql: str, minimum: float, timeout: float = 120) -> float:
    def check() -> float | None:
        result = query(machine, promql)
        value = float(result[0]["value"][1]) if result else None
        return value if value is not None and value >= minimum else None

    return poll(check, timeout, f"{promql} >= {minimum}", interval=2)
