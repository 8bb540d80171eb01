"""The agent's calls (register, heartbeat, claim, attempt details, report one or many) as store
transactions, shared by the API's routes and by InProcessApi: the agent of `repxd all` calls
them directly, without HTTP to its own socket (a third of the daemon's CPU per job went on
encoding, sending and routing those requests to itself)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import asdict

from pydantic import BaseModel, ValidationError

from ..engine.wakeups import wakeups
from ..errors import RepxError
from ..service.daemon_config import Settings
from ..store import queries as q
from ..store.db import AsyncDatabase, StoreFull
from .client import ApiError
from .models import ClaimRequest, HeartbeatRequest, RegisterRequest, ReportRequest, ReportsRequest


class NotFound(Exception):
    """The agent or attempt named is unknown: the HTTP routes answer 404."""


async def register(database: AsyncDatabase, settings: Settings, req: RegisterRequest) -> dict:
    lease = settings.scheduler.lease_seconds
    agent = await database.run(q.register_agent, database.db, req.id, req.host, req.inventory, req.labels, lease)
    live = await database.run(database.db.read, f"SELECT id FROM attempts WHERE agent_id=? AND state IN {q.LIVE_ATTEMPT_STATES}"
                                                " AND state!='assigned'", (req.id,))
    wakeups(database).wake_scheduler()
    return {"agent": asdict(agent), "lease_seconds": lease, "adopt": [r["id"] for r in live]}


async def heartbeat(database: AsyncDatabase, settings: Settings, agent: str, req: HeartbeatRequest) -> dict:
    lease = settings.scheduler.lease_seconds
    state, cancel, adopt = await database.run(q.heartbeat, database.db, agent, lease, req.running, req.handles)
    if state is None:
        raise NotFound(f"agent {agent!r} is not registered; register again")
    return {"state": state, "cancel": cancel, "adopt": adopt, "lease_seconds": lease}


async def claim(database: AsyncDatabase, agent: str, req: ClaimRequest) -> list[dict]:
    """Assigned attempts of `agent`, waiting up to req.wait for some (a long poll)."""
    deadline = time.monotonic() + req.wait
    woken = wakeups(database)
    while True:
        seen = woken.placements
        work = await database.run(q.claim, database.db, agent, req.max)
        if work or time.monotonic() >= deadline:
            return work
        if woken.placements != seen:  # placed while we asked: ask again at once
            continue
        with contextlib.suppress(TimeoutError):  # woken at once by a scheduler in this process
            await asyncio.wait_for(woken.placed.wait(), 0.05)


async def attempt_details(database: AsyncDatabase, attempt: int) -> dict:
    rows = await database.run(database.db.read, "SELECT a.*, r.lab_path, r.options, r.target, r.submitter_uid FROM attempts a"
                                                " JOIN runs r ON r.id=a.run_id WHERE a.id=?", (attempt,))
    if not rows:
        raise NotFound("no such attempt")
    row = rows[0]
    return {"attempt": row["id"], "run": row["run_id"], "job": row["job_id"], "base_path": row["base_path"],
            "lab_path": row["lab_path"], "target": row["target"], "options": json.loads(row["options"]),
            "cpus": row["cpus"], "mem": row["mem"], "state": row["state"],
            "devices": json.loads(row["devices"] or "[]"), "submitter_uid": row["submitter_uid"]}


def _retry_policy(settings: Settings) -> q.RetryPolicy:
    s = settings.scheduler
    return q.RetryPolicy(s.max_lost, s.job_retries, s.backoff)


async def report(database: AsyncDatabase, settings: Settings, attempt: int, req: ReportRequest) -> dict:
    recorded = await database.run(q.complete_attempt, database.db, attempt, req.outcome, req.exit_status, req.reason,
                                  _retry_policy(settings))
    wakeups(database).wake_scheduler()  # room freed, dependents may be placeable
    return {"recorded": recorded}


async def reports(database: AsyncDatabase, settings: Settings, agent: str, req: ReportsRequest) -> dict:
    """Each report as `report` records it, all in one hand-off to the store's thread; `recorded`
    in the reports' order (False for an attempt that had ended already or is unknown), and `work`
    as `claim` answers for req.claim and req.wait."""
    policy = _retry_policy(settings)

    def complete_all(db) -> list[bool]:
        return [q.complete_attempt(db, r.attempt, r.outcome, r.exit_status, r.reason, policy) for r in req.reports]

    recorded = await database.run(complete_all, database.db)
    wakeups(database).wake_scheduler()
    work = await claim(database, agent, ClaimRequest(max=req.claim, wait=req.wait)) if req.claim else []
    return {"recorded": recorded, "work": work}


_AGENT_CALL = re.compile(r"/v1/agents/(?P<agent>[^/]+)/(?P<action>heartbeat|claim|reports)")
_ATTEMPT = re.compile(r"/v1/attempts/(?P<attempt>[0-9]+)")


class InProcessApi:
    """What the agent's API client does (`call(method, path, json)`), answered by the store
    directly for an agent sharing the API's process and database. Errors come as the HTTP
    client's would (ApiError with the status the route gives), so the agent behaves the same:
    it retries 5xx (a full store) and re-registers on a 404 heartbeat."""

    def __init__(self, database: AsyncDatabase, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.address = "in-process"
        self.remote = False  # calls cost no round trip

    async def call(self, method: str, path: str, payload=None, timeout: float | None = None):
        try:
            return await self._dispatch(method, path, payload or {})
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        except ValidationError as exc:
            raise ApiError(400, f"{path}: {exc.errors()[0]['msg']}") from None
        except StoreFull as exc:
            raise ApiError(503, str(exc)) from None
        except RepxError as exc:
            raise ApiError(400, str(exc)) from None

    async def _dispatch(self, method: str, path: str, payload: dict):
        def body(model: type[BaseModel]):
            return model.model_validate(payload)

        if method == "POST" and path == "/v1/agents":
            return await register(self.database, self.settings, body(RegisterRequest))
        if method == "POST" and (m := _AGENT_CALL.fullmatch(path)):
            if m["action"] == "claim":
                return await claim(self.database, m["agent"], body(ClaimRequest))
            if m["action"] == "reports":
                return await reports(self.database, self.settings, m["agent"], body(ReportsRequest))
            return await heartbeat(self.database, self.settings, m["agent"], body(HeartbeatRequest))
        if method == "GET" and (m := _ATTEMPT.fullmatch(path)):
            return await attempt_details(self.database, int(m["attempt"]))
        raise ApiError(404, f"{method} {path} is no call of the in-process agent")

    async def close(self) -> None:
        pass
