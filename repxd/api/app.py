"""The API's routes. Every handler is a thin shell around one store transaction."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from dataclasses import asdict

from aiohttp import web
from prometheus_client.core import CounterMetricFamily

from ..engine.wakeups import wakeups
from ..errors import RepxError
from ..observe.metrics import ApiMetrics, exposition
from ..service.daemon_config import Settings
from ..service.submit import plan_submission
from ..store import queries as q
from ..store import reads
from ..store.db import AsyncDatabase, ChangeWatch, StoreFull
from .agent_routes import attempt_details, claim, heartbeat, register_agent, report, reports
from .auth import Authenticator, deny, require_admin, require_owner
from .job_log import job_log
from .models import SubmitRequest
from .openapi import openapi_document
from .requests import (
    CALLER,
    DB,
    METRICS,
    PEERS,
    ROLE_REGISTRIES,
    SETTINGS,
    body,
    caller,
    db,
    error,
    int_query,
)

SUBMITTING = web.AppKey("submitting", dict)  # submissions being loaded, per caller name
# Finished runs' answers to GET /v1/runs/{id}, encoded: status reads of them skip the store.
DONE_RUNS = web.AppKey("done_runs", dict)
DONE_RUNS_KEPT = 10_000
# Active runs' answers, each with the store's version (ChangeWatch) read before it: a poll is
# answered from here, without a trip to the store's thread, until anything at all is stored, so
# an answer never predates a stored change, and a run's reads cost at most one count per commit.
ACTIVE_RUNS = web.AppKey("active_runs", dict)
# Reads of an active run under way, by (run, store version taken before the read): a poll that
# finds one for the version it sees joins it, since that read started after every commit the poll
# must see. So while jobs finish, each commit costs one count however many clients poll.
READING_RUNS = web.AppKey("reading_runs", dict)
WATCH = web.AppKey("watch", ChangeWatch)
ACTIVE_RUNS_KEPT = 1_000
# Loading, unpacking and verifying a Lab is heavy; one user may not occupy every worker thread.
MAX_SUBMITS_PER_USER = 2


@web.middleware
async def observe(request: web.Request, handler):
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except RepxError as exc:
        response = error(400, str(exc))
    except StoreFull as exc:  # read-only until space returns; the caller may try again
        response = web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "10"})
    metrics = request.app[METRICS]
    metrics.requests.labels(route, request.method, str(response.status)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - started)
    if isinstance(response, web.HTTPException):
        raise response
    return response


def run_json(run) -> dict:
    data = dict(vars(run))  # a shallow copy: asdict's deep copy was a tenth of a run read's CPU
    data["done"] = run.state not in ("active", "cancelling")
    return data


async def _run_or_404(request: web.Request):
    run = await db(request).run(reads.get_run, db(request).db, request.match_info["run"])
    if run is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no run {request.match_info['run']!r} (see `repxctl runs`)"}),
                               content_type="application/json")
    return run


# ---- runs --------------------------------------------------------------------------------


async def submit(request: web.Request) -> web.Response:
    who = caller(request)
    if not who.may_submit:
        why = ("the agent token only serves agents" if who.via == "token" else
               f"not a member of the allowed groups ({', '.join(request.app[SETTINGS].api.allowed_groups)})")
        raise deny(403, f"{who.name} may not submit runs: {why}")
    req = await body(request, SubmitRequest)
    settings = request.app[SETTINGS]
    busy = request.app[SUBMITTING]
    if busy.get(who.name, 0) >= MAX_SUBMITS_PER_USER:
        raise web.HTTPTooManyRequests(text=json.dumps({"error": f"{who.name} has {MAX_SUBMITS_PER_USER} submissions being loaded "
                                                                 "already; wait for them and submit again"}),
                                      content_type="application/json", headers={"Retry-After": "5"})
    busy[who.name] = busy.get(who.name, 0) + 1
    try:
        run, jobs = await asyncio.to_thread(plan_submission, settings, req.lab, req.selection, req.target,
                                            req.options.model_dump(), who.uid, who.name,
                                            read_as_submitter=who.via == "socket")
    finally:
        busy[who.name] -= 1
    stored = await db(request).write(q.create_run, db(request).db, run, jobs)
    wakeups(db(request)).wake_scheduler()
    return web.json_response(run_json(stored), status=201)


# A listing shows this many selection entries per run (and the count): forty runs of 1 MB
# selections once made one listing 39 MB. `GET /v1/runs/{run}` has the whole selection.
SELECTION_ECHO = 20


async def list_runs(request: web.Request) -> web.Response:
    """A page of runs, newest first; the header X-Next-Cursor, when present, is the `before=` of the next page."""
    caller(request)
    limit = int_query(request, "limit", 100, 1, 1000)
    before = request.query.get("before")
    try:
        runs = await db(request).run(reads.list_runs, db(request).db, limit, before)
    except KeyError:
        return error(400, f"query parameter before={before!r} is no run id; give the X-Next-Cursor of the previous page")
    listed = [run_json(r) | {"selection": r.selection[:SELECTION_ECHO], "selection_count": len(r.selection)} for r in runs]
    headers = {"X-Next-Cursor": runs[-1].id} if len(runs) == limit else {}
    return web.json_response(listed, headers=headers)


async def show_run(request: web.Request) -> web.Response:
    caller(request)
    run_id = request.match_info["run"]
    done, active = request.app[DONE_RUNS], request.app[ACTIVE_RUNS]
    if (known := done.get(run_id)) is not None:
        return web.Response(body=known, content_type="application/json")
    # Taken before the read: a commit landing between the two leaves the answer kept with an older
    # version, so the next poll reads again.
    version = request.app[WATCH].version()
    if version is not None and (kept := active.get(run_id)) is not None and kept[0] == version:
        return web.Response(body=kept[1], content_type="application/json")
    reading = request.app[READING_RUNS]
    if version is None:
        return await _read_run(request, run_id, version)
    if (underway := reading.get((run_id, version))) is not None:
        try:
            return web.Response(body=await asyncio.shield(underway), content_type="application/json")
        except asyncio.CancelledError:
            if not underway.cancelled():
                raise  # this request was cancelled, not the read it joined
            return await _read_run(request, run_id, version)  # that read failed (say, 404): its own
    underway = reading[run_id, version] = asyncio.get_running_loop().create_future()
    try:
        response = await _read_run(request, run_id, version)
        underway.set_result(response.body)
        return response
    finally:
        underway.cancel()  # no effect once it has its answer
        del reading[run_id, version]


async def _read_run(request: web.Request, run_id: str, version: int | None) -> web.Response:
    done, active = request.app[DONE_RUNS], request.app[ACTIVE_RUNS]
    run = run_json(await _run_or_404(request))
    encoded = json.dumps(run).encode()
    # Keyed by the whole id only, since a prefix may name another run (or none) once more runs exist.
    if run["id"] == run_id:
        # A finished run changes only by a retry through this API, which empties the cache; one
        # that committed while this read was under way may have emptied it before this answer
        # (read before the retry) is kept, so the answer is kept only when nothing was stored since.
        if run["done"] and version is not None and request.app[WATCH].version() == version:
            if len(done) >= DONE_RUNS_KEPT:
                done.clear()
            done[run_id] = encoded
        elif not run["done"] and version is not None:
            if len(active) >= ACTIVE_RUNS_KEPT:
                active.clear()
            active[run_id] = (version, encoded)
    return web.Response(body=encoded, content_type="application/json")


async def _owner_action(request: web.Request, action: str, transition, result_key: str) -> web.Response:
    """cancel or retry: allowed to the run's submitter and to admins; wakes the scheduler."""
    who = caller(request)
    run = await _run_or_404(request)
    require_owner(who, run.submitter_uid, run.submitter_name, action)
    request.app[DONE_RUNS].clear()  # a retried run is active again
    count = await db(request).run(transition, db(request).db, run.id)
    wakeups(db(request)).wake_scheduler()
    return web.json_response({"run": run.id, result_key: count})


async def cancel_run(request: web.Request) -> web.Response:
    return await _owner_action(request, "cancel", q.cancel_run, "stopping_attempts")


async def retry_run(request: web.Request) -> web.Response:
    return await _owner_action(request, "retry", q.retry_run, "requeued")


# Jobs and attempts are listed oldest first (run and topological order, attempt order); a page
# holds `limit` of them and X-Next-Cursor, when present, is the `after=` of the next one.
PAGE = 1000
MAX_PAGE = 10_000


async def list_jobs(request: web.Request) -> web.Response:
    caller(request)
    # /v1/runs/{run}/jobs takes a run-id prefix and 404s; /v1/jobs?run= filters as given.
    run_id = (await _run_or_404(request)).id if "run" in request.match_info else request.query.get("run")
    limit = int_query(request, "limit", PAGE, 1, MAX_PAGE)
    after = request.query.get("after")
    cursor = after.split("/", 1) if after is not None else None
    try:
        if cursor is not None and len(cursor) != 2:
            raise KeyError(after)
        jobs = await db(request).run(reads.list_jobs, db(request).db, run_id, request.query.get("state"), limit,
                                     tuple(cursor) if cursor else None)
    except KeyError:
        return error(400, f"query parameter after={after!r} is no job of this listing; give the X-Next-Cursor of the previous page")
    headers = {"X-Next-Cursor": f"{jobs[-1].run_id}/{jobs[-1].job_id}"} if len(jobs) == limit else {}
    return web.json_response([asdict(j) for j in jobs], headers=headers)


async def list_attempts(request: web.Request) -> web.Response:
    caller(request)
    limit = int_query(request, "limit", PAGE, 1, MAX_PAGE)
    after = int_query(request, "after", 0, 0, (1 << 63) - 1)
    attempts = await db(request).run(reads.list_attempts, db(request).db, request.query.get("run"), request.query.get("job"),
                                     limit, after)
    headers = {"X-Next-Cursor": str(attempts[-1].id)} if len(attempts) == limit else {}
    return web.json_response([asdict(a) for a in attempts], headers=headers)


# ---- agents ------------------------------------------------------------------------------


async def list_agents(request: web.Request) -> web.Response:
    caller(request)
    agents = await db(request).run(reads.list_agents, db(request).db)
    load = await db(request).run(q.agent_load, db(request).db)
    running: dict[str, int] = {}
    for (agent_id, _target), (n, _cpus, _mem) in load.items():
        running[agent_id] = running.get(agent_id, 0) + n
    now = time.time()
    return web.json_response([asdict(a) | {"running": running.get(a.id, 0), "lease_left": round(a.lease_expires - now, 1)}
                              for a in agents])


async def hardware(request: web.Request) -> web.Response:
    caller(request)
    agents = await db(request).run(reads.list_agents, db(request).db)
    held = await db(request).run(q.held_devices, db(request).db)
    name = request.query.get("agent")
    if name and not any(a.id == name for a in agents):
        return error(404, f"no agent {name!r} (see `repxctl agents`)")
    return web.json_response([{"agent": a.id, "host": a.host, "state": a.state, "hardware": a.inventory.get("hardware"),
                               "gpus_in_use": sorted(held.get(a.id, ()))} for a in agents if not name or a.id == name])


async def agent_state(request: web.Request) -> web.Response:
    require_admin(caller(request), "changing an agent")
    agent, action = request.match_info["agent"], request.match_info["action"]
    states = {"drain": "draining", "undrain": "active"}
    if action not in states:
        return error(404, f"unknown action {action!r}; use drain or undrain")
    if not await db(request).run(q.set_agent_state, db(request).db, agent, states[action]):
        return error(404, f"no agent {agent!r}")
    wakeups(db(request)).wake_scheduler()
    return web.json_response({"agent": agent, "state": states[action]})


async def forget_agent(request: web.Request) -> web.Response:
    require_admin(caller(request), "forgetting an agent")
    agent = request.match_info["agent"]
    if not await db(request).run(q.forget_agent, db(request).db, agent):
        return error(409, f"agent {agent!r} is unknown or still has running attempts; drain it and wait")
    return web.json_response({"agent": agent, "forgotten": True})


# ---- status ------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Liveness for probes that hold no secret (load balancers, `systemctl`-side checks): a TCP
    caller without a valid token learns only that the API answers, not its version."""
    try:
        caller(request)
    except web.HTTPUnauthorized:
        return web.json_response({"status": "ok"})
    store = db(request).db
    if store.full_since is not None:  # still answering, but writes are refused until space returns
        return web.json_response({"status": "read-only", "version": request.app["version"], "reason": str(StoreFull(store.path))})
    return web.json_response({"status": "ok", "version": request.app["version"]})


async def status(request: web.Request) -> web.Response:
    caller(request)
    database = db(request)
    roles = await database.run(database.db.read, "SELECT * FROM roles ORDER BY name")
    agents = await database.run(reads.list_agents, database.db)
    counts = await database.run(reads.job_state_counts, database.db)
    now = time.time()
    return web.json_response({
        "roles": [{"name": r["name"], "host": r["host"], "pid": r["pid"], "age": round(now - r["last_seen"], 1)} for r in roles],
        "agents": {state: sum(1 for a in agents if a.state == state) for state in ("active", "draining", "lost")},
        "jobs": counts,
    })


async def metrics(request: web.Request) -> web.Response:
    # Request counts and latencies per route template, no run, job or user in them; still, where
    # the daemon has tokens, TCP callers need one (Authenticator.check_metrics).
    request.app[CALLER].check_metrics(request)
    return exposition(request.app[METRICS].registry, *request.app[ROLE_REGISTRIES])


async def openapi(request: web.Request) -> web.Response:
    caller(request)
    return web.json_response(openapi_document(request.app["version"]))


class StoreCommits:
    """repx_store_commits_total: how many transactions this process committed; next to the
    submits counted in repx_api_requests_total it shows how many submits each COMMIT carried."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        yield CounterMetricFamily("repx_store_commits", "Transactions this process committed to the store "
                                  "(concurrent writes grouped into one count once)", value=self.store.commits)


async def _close_watch(app: web.Application) -> None:
    app[WATCH].close()


def make_app(settings: Settings, database: AsyncDatabase, version: str, role_registries=()) -> web.Application:
    app = web.Application(middlewares=[observe])
    app[SETTINGS] = settings
    app[SUBMITTING] = {}
    app[DONE_RUNS] = {}
    app[ACTIVE_RUNS] = {}
    app[READING_RUNS] = {}
    app[WATCH] = ChangeWatch(database.db.path)
    app.on_cleanup.append(_close_watch)
    app[DB] = database
    app[CALLER] = Authenticator(settings.api)
    app[METRICS] = ApiMetrics()
    app[METRICS].registry.register(StoreCommits(database.db))
    app[ROLE_REGISTRIES] = tuple(role_registries)  # `repxd all`: the scheduler's and agent's metrics too
    app[PEERS] = weakref.WeakKeyDictionary()
    app["version"] = version
    r = app.router
    r.add_get("/v1/health", health)
    r.add_get("/v1/status", status)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    r.add_post("/v1/runs", submit)
    r.add_get("/v1/runs", list_runs)
    r.add_get("/v1/runs/{run}", show_run)
    r.add_post("/v1/runs/{run}/cancel", cancel_run)
    r.add_post("/v1/runs/{run}/retry", retry_run)
    r.add_get("/v1/runs/{run}/jobs", list_jobs)
    r.add_get("/v1/jobs", list_jobs)
    r.add_get("/v1/jobs/{job}/log", job_log)
    r.add_get("/v1/attempts", list_attempts)
    r.add_get("/v1/agents", list_agents)
    r.add_get("/v1/hardware", hardware)
    r.add_post("/v1/agents", register_agent)
    r.add_post("/v1/agents/{agent}/heartbeat", heartbeat)
    r.add_post("/v1/agents/{agent}/claim", claim)
    r.add_post("/v1/agents/{agent}/reports", reports)
    r.add_post("/v1/agents/{agent}/{action}", agent_state)
    r.add_delete("/v1/agents/{agent}", forget_agent)
    r.add_get("/v1/attempts/{attempt}", attempt_details)
    r.add_post("/v1/attempts/{attempt}/report", report)
    return app
