"""What every route uses: the application's keys and reading a request (who calls, its body,
its query parameters), with errors as the caller's 400/404 in the API's JSON shape."""

from __future__ import annotations

import json
import weakref

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..observe.metrics import ApiMetrics
from ..service.daemon_config import Settings
from ..store.db import AsyncDatabase
from .auth import Authenticator, Caller

CALLER = web.AppKey("caller_factory", Authenticator)
DB = web.AppKey("db", AsyncDatabase)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", ApiMetrics)
ROLE_REGISTRIES = web.AppKey("role_registries", tuple)
PEERS = web.AppKey("peers", weakref.WeakKeyDictionary)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; anything else is the caller's 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"query parameter {name}={raw!r}: give a whole number from {low} to {high}"}),
                                 content_type="application/json")
    return value


def choice_query(request: web.Request, name: str, choices: dict[str, object]) -> object:
    """A query parameter with a few spellings; anything else is the caller's 400 naming them."""
    raw = request.query.get(name)
    if raw is None:
        return next(iter(choices.values()))
    if raw not in choices:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"query parameter {name}={raw!r}: give one of {', '.join(choices)}"}),
                                 content_type="application/json")
    return choices[raw]


def attempt_id(request: web.Request) -> int:
    """The attempt number in the path; anything but one SQLite can hold names no attempt (404)."""
    raw = request.match_info["attempt"]
    if raw.isascii() and raw.isdigit() and int(raw) < 1 << 63:
        return int(raw)
    raise web.HTTPNotFound(text=json.dumps({"error": f"no attempt {raw!r}: attempts are numbered"}), content_type="application/json")


async def body(request: web.Request, model: type[BaseModel]):
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{where}: {err['msg']}"}), content_type="application/json") from None


def caller(request: web.Request) -> Caller:
    """Who calls. A Unix-socket peer is resolved (SO_PEERCRED, passwd and group lookups) once per
    connection: its credentials are the ones it connected with. Tokens are checked every request."""
    transport = request.transport
    known = request.app[PEERS].get(transport) if transport is not None else None
    if known is not None:
        return known
    who = request.app[CALLER].caller(request)
    if who.via == "socket" and transport is not None:
        request.app[PEERS][transport] = who
    return who


def db(request: web.Request) -> AsyncDatabase:
    return request.app[DB]
