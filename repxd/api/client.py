"""HTTP clients of the API, over the Unix socket or TCP (with a bearer token)."""

from __future__ import annotations

import httpx

from ..errors import RepxError


class ApiError(RepxError):
    """The API refused or failed a request; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if status in (400, 401, 403, 404, 409) else 1


def client_args(api: str, token: str | None) -> dict:
    """httpx arguments for `api`: a URL, or the path of the API's Unix socket."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if api.startswith(("http://", "https://")):
        return {"base_url": api.rstrip("/"), "headers": headers}
    return {"base_url": "http://repx", "headers": headers, "transport_uds": api}


def _error(response: httpx.Response) -> ApiError:
    try:
        message = response.json().get("error") or response.text
    except ValueError:
        message = response.text or response.reason_phrase
    return ApiError(response.status_code, message)


class AsyncApi:
    def __init__(self, api: str, token: str | None = None, timeout: float = 60.0) -> None:
        args = client_args(api, token)
        uds = args.pop("transport_uds", None)
        transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
        self.http = httpx.AsyncClient(transport=transport, timeout=timeout, **args)

    async def call(self, method: str, path: str, json=None, timeout: float | None = None):
        kwargs = {"json": json}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    async def close(self) -> None:
        await self.http.aclose()


class Api:
    def __init__(self, api: str, token: str | None = None, timeout: float = 60.0) -> None:
        args = client_args(api, token)
        uds = args.pop("transport_uds", None)
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        self.address = api
        self.http = httpx.Client(transport=transport, timeout=timeout, **args)

    def call(self, method: str, path: str, json=None, **kwargs):
        try:
            response = self.http.request(method, path, json=json, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(503, f"cannot reach the repx API at {self.address} ({exc}); is repx-api running?") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    def stream(self, path: str, params: dict):
        return self.http.stream("GET", path, params=params, timeout=None)

    def reachable(self) -> bool:
        try:
            return self.http.get("/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
