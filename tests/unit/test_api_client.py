"""The agent's API client (httpx, as repxctl's) against a real aiohttp server, over TCP and a
Unix socket: answers, refusals with the server's message, the bearer token, and an API that is
not there."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from repxd.api.client import ApiError, ApiUnavailable, AsyncApi


async def _serve(site_factory):
    seen = {}

    async def echo(request: web.Request) -> web.Response:
        seen["auth"] = request.headers.get("Authorization")
        return web.json_response({"got": await request.json()})

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": "agent a-1 is not registered"}, status=404)

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/v1/refuse", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    address = await site_factory(runner)
    return runner, address, seen


def test_calls_over_tcp_with_a_token():
    async def main():
        async def tcp(runner):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            return f"http://127.0.0.1:{port}"

        runner, url, seen = await _serve(tcp)
        api = AsyncApi(url, token="s3cret")
        try:
            assert await api.call("POST", "/v1/echo", {"running": [1, 2]}) == {"got": {"running": [1, 2]}}
            assert seen["auth"] == "Bearer s3cret"
            with pytest.raises(ApiError) as refused:
                await api.call("GET", "/v1/refuse")
            assert refused.value.status == 404 and str(refused.value) == "agent a-1 is not registered"
            with pytest.raises(ApiUnavailable, match="127.0.0.1"):  # no answer within the call's timeout
                await api.call("GET", "/v1/slow", timeout=0.3)
        finally:
            await api.close()
            await runner.cleanup()

    asyncio.run(main())


def test_calls_over_a_unix_socket_and_reports_a_missing_api(tmp_path):
    socket_path = str(tmp_path / "api.sock")

    async def main():
        async def unix(runner):
            await web.UnixSite(runner, socket_path).start()
            return socket_path

        runner, path, seen = await _serve(unix)
        api = AsyncApi(path)
        try:
            assert await api.call("POST", "/v1/echo", {}) == {"got": {}}
            assert seen["auth"] is None
        finally:
            await runner.cleanup()
        with pytest.raises(ApiUnavailable, match="api.sock"):
            await api.call("POST", "/v1/echo", {}, timeout=2)
        await api.close()

    asyncio.run(main())
