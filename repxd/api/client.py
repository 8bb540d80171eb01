"""HTTP clients of the API, over the Unix socket or TCP (with a bearer token)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from ..errors import RepxError


class ApiError(RepxError):
    """The API refused or failed a request; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if status in (400, 401, 403, 404, 409) else 1


def client_args(api: str, token: str | None, transport: type[httpx.HTTPTransport | httpx.AsyncHTTPTransport]) -> dict:
    """httpx.Client or AsyncClient arguments for `api`: a URL, or the path of the API's Unix
    socket (then a `transport` over it)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if api.startswith(("http://", "https://")):
        return {"base_url": api.rstrip("/"), "headers": headers}
    return {"base_url": "http://repx", "headers": headers, "transport": transport(uds=api)}


def _error(status: int, body: bytes, reason: str) -> ApiError:
    text = body.decode(errors="replace")
    try:
        message = json.loads(text).get("error") or text
    except (ValueError, AttributeError):
        message = text or reason
    return ApiError(status, message)


def unreachable(address: str, exc: Exception) -> str:
    """Why nobody answered at `address`, naming it: a socket file with no daemon behind it is
    told apart from a missing one and from a network failure."""
    if address.startswith(("http://", "https://")):
        return f"cannot reach the repx API at {address} ({exc}); is repx-api running there?"
    if isinstance(exc, httpx.ConnectError) and Path(address).is_socket():
        return (f"no repx daemon is listening on {address} (connection refused: its daemon is not running "
                "and left the socket behind); start it (`repxd all`), or pass another with --api")
    if not Path(address).exists():
        return f"no repx daemon at {address} (no such socket); start one (`repxd all`), or pass its socket with --api"
    return f"cannot reach the repx API at {address} ({exc}); is repx-api running?"


class ApiUnavailable(Exception):
    """The API did not answer: not running, restarting, or out of reach."""


class AsyncApi:
    """The agent's client: httpx, as repxctl's, on the running loop. The client is made at the
    first call, inside the loop that uses it (its connection pool belongs to that loop)."""

    def __init__(self, api: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = api
        self.remote = True  # each call is a round trip to another process
        self._token = token
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            args = client_args(self.address, self._token, httpx.AsyncHTTPTransport)
            self._http = httpx.AsyncClient(timeout=self._timeout, **args)
        return self._http

    async def call(self, method: str, path: str, payload=None, timeout: float | None = None):
        try:
            response = await self._client().request(method, path, json=payload, timeout=timeout or self._timeout)
        except httpx.TransportError as exc:  # refused, reset, timed out
            raise ApiUnavailable(f"{self.address}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _error(response.status_code, response.content, response.reason_phrase)
        return json.loads(response.content)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class Api:
    def __init__(self, api: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = api
        self.http = httpx.Client(timeout=timeout, **client_args(api, token, httpx.HTTPTransport))

    def call(self, method: str, path: str, json=None, **kwargs):
        return self._json(self._request(method, path, json=json, **kwargs), path)

    def listing(self, path: str, params: dict | None = None) -> list:
        """Every item of a paged listing (/v1/jobs, /v1/attempts): each X-Next-Cursor is the
        `after=` of the next page."""
        params, items = dict(params or {}), []
        while True:
            response = self._request("GET", path, params=params)
            items += self._json(response, path)
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return items
            params["after"] = cursor

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(503, unreachable(self.address, exc)) from None
        if response.status_code >= 400:
            raise _error(response.status_code, response.content, response.reason_phrase)
        return response

    def _json(self, response: httpx.Response, path: str):
        try:
            return response.json()
        except ValueError:
            wrong = ApiError(502, f"{self.address} answered {path} with something other than JSON; "
                                  "is it the repx API (--api, REPX_API)?")
            wrong.exit_code = 2  # the address is the caller's configuration
            raise wrong from None

    def stream(self, path: str, params: dict):
        return self.http.stream("GET", path, params=params, timeout=None)

    def reachable(self) -> bool:
        try:
            return self.http.get("/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
