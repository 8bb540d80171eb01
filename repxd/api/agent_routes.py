"""The agents' routes: each checks that an agent calls, then runs its agent_calls transaction."""

from __future__ import annotations

from aiohttp import web

from . import agent_calls
from .auth import require_agent
from .models import ClaimRequest, HeartbeatRequest, RegisterRequest, ReportRequest, ReportsRequest
from .requests import SETTINGS, attempt_id, body, caller, db, error


async def register_agent(request: web.Request) -> web.Response:
    require_agent(caller(request))
    return web.json_response(await agent_calls.register(db(request), request.app[SETTINGS], await body(request, RegisterRequest)))


async def heartbeat(request: web.Request) -> web.Response:
    require_agent(caller(request))
    req = await body(request, HeartbeatRequest)
    try:
        return web.json_response(await agent_calls.heartbeat(db(request), request.app[SETTINGS], request.match_info["agent"], req))
    except agent_calls.NotFound as exc:
        return error(404, str(exc))


async def claim(request: web.Request) -> web.Response:
    require_agent(caller(request))
    req = await body(request, ClaimRequest)
    return web.json_response(await agent_calls.claim(db(request), request.match_info["agent"], req))


async def attempt_details(request: web.Request) -> web.Response:
    require_agent(caller(request))
    try:
        return web.json_response(await agent_calls.attempt_details(db(request), attempt_id(request)))
    except agent_calls.NotFound as exc:
        return error(404, str(exc))


async def report(request: web.Request) -> web.Response:
    require_agent(caller(request))
    req = await body(request, ReportRequest)
    return web.json_response(await agent_calls.report(db(request), request.app[SETTINGS], attempt_id(request), req))


async def reports(request: web.Request) -> web.Response:
    require_agent(caller(request))
    req = await body(request, ReportsRequest)
    return web.json_response(await agent_calls.reports(db(request), request.app[SETTINGS], request.match_info["agent"], req))
