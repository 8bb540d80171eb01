"""Who is calling: peer credentials on the Unix socket, bearer tokens on TCP.

Policy: root, the daemon's own user and members of `admin_groups` may do everything; members
of `allowed_groups` (everyone when it is empty) submit runs and cancel or retry their own;
agents use the agent token on TCP or are privileged on the socket."""

from __future__ import annotations

import grp
import hmac
import json
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from aiohttp import web

from ..service.daemon_config import ApiSettings, read_token


@dataclass(frozen=True)
class Caller:
    uid: int
    name: str
    groups: frozenset[str]
    admin: bool
    agent: bool
    may_submit: bool
    via: str  # "socket" | "token"


class AuthError(web.HTTPException):
    pass


def deny(status: int, sentence: str) -> web.HTTPException:
    text = json.dumps({"error": sentence})
    if status == 403:
        return web.HTTPForbidden(text=text, content_type="application/json")
    return web.HTTPUnauthorized(text=text, content_type="application/json", headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.agent_token = read_token(settings.agent_token_file)
        self.admin_token = read_token(settings.admin_token_file)
        self.metrics_token = read_token(settings.metrics_token_file)
        self.daemon_uid = os.geteuid()

    def check_metrics(self, request: web.Request) -> None:
        """/metrics is open on the socket, and on TCP while the daemon has no token at all (then
        every TCP request is refused but this one); with tokens, TCP needs one of them. The metrics
        token opens /metrics only, so a Prometheus holding it can read nothing else."""
        sock = request.transport.get_extra_info("socket") if request.transport else None
        tokens = [t for t in (self.metrics_token, self.agent_token, self.admin_token) if t]
        if (sock is not None and sock.family == socket.AF_UNIX) or not tokens:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token and any(hmac.compare_digest(token, known) for known in tokens):
            return
        raise deny(401, "/metrics on this TCP listener needs a bearer token: the one in api.metrics_token_file "
                        "(for Prometheus), or the agent's or the admin's")

    def caller(self, request: web.Request) -> Caller:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family == socket.AF_UNIX:
            return self._from_peer(sock)
        return self._from_token(request.headers.get("Authorization", ""))

    def _from_peer(self, sock: socket.socket) -> Caller:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", creds)
        try:
            entry = pwd.getpwuid(uid)
            name = entry.pw_name
            groups = frozenset(grp.getgrgid(g).gr_name for g in os.getgrouplist(name, gid) if _group_exists(g))
        except KeyError:
            name, groups = f"uid{uid}", frozenset()
        admin = uid in (0, self.daemon_uid) or bool(groups & set(self.settings.admin_groups))
        allowed = not self.settings.allowed_groups or bool(groups & set(self.settings.allowed_groups))
        return Caller(uid, name, groups, admin, admin, admin or allowed, "socket")

    def _from_token(self, header: str) -> Caller:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise deny(401, "this TCP listener needs a bearer token (Authorization: Bearer <token>)")
        if self.admin_token and hmac.compare_digest(token, self.admin_token):
            return Caller(-1, "admin-token", frozenset(), True, True, True, "token")
        if self.agent_token and hmac.compare_digest(token, self.agent_token):
            return Caller(-1, "agent-token", frozenset(), False, True, False, "token")
        raise deny(401, "the bearer token is not valid for this daemon")


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def require_admin(caller: Caller, action: str) -> None:
    if not caller.admin:
        raise deny(403, f"{action} needs an administrator (root or a member of the admin groups); {caller.name} is not one")


def require_agent(caller: Caller) -> None:
    if not caller.agent:
        raise deny(403, f"only agents may use this endpoint; {caller.name} is not an agent")


def require_owner(caller: Caller, owner_uid: int, owner_name: str, action: str) -> None:
    # Token callers have no uid of their own (-1): they own nothing, not even runs an admin token submitted.
    if caller.admin or (caller.via == "socket" and caller.uid == owner_uid):
        return
    raise deny(403, f"{caller.name} may not {action} run of {owner_name}: users may {action} only their own runs")
