"""Status reads of an active run are answered from memory until the store changes: a poll must
never show a run older than what was stored before it asked, whoever stored it."""

from __future__ import annotations

import asyncio

import pytest
from service import Daemon

from repxd.api.client import Api, ApiError, AsyncApi
from repxd.lab.writer import LabWriter
from repxd.store import queries as q
from repxd.store.db import Database


@pytest.fixture
def api_only():
    # The api role alone: no scheduler places the jobs, so nothing changes a run unless the test does.
    d = Daemon.create()
    d.start("api")
    yield d
    d.stop()


def two_pending_runs(d: Daemon, tmp_path) -> tuple[Api, list[str]]:
    writer = LabWriter()
    run = writer.run("idle")
    run.job("first", "#!/bin/sh\n: > \"$1/x\"\n", outputs={"x": "$out/x"})
    run.job("second", "#!/bin/sh\n: > \"$1/y\"\n", outputs={"y": "$out/y"})
    lab = writer.write(tmp_path / "lab")
    api = Api(str(d.socket))
    ids = [api.call("POST", "/v1/runs", {"lab": str(lab), "selection": ["idle"]})["id"] for _ in range(2)]
    for run_id in ids:
        for _ in range(3):  # read more than once: later reads may be answered from memory
            shown = api.call("GET", f"/v1/runs/{run_id}")
            assert shown["state"] == "active" and shown["counts"] == {"pending": 2}, shown
    return api, ids


def test_a_change_stored_by_another_process_shows_in_the_next_read(api_only, tmp_path):
    api, (run_id, other) = two_pending_runs(api_only, tmp_path)
    # Another connection to the store, as the scheduler role (a process of its own) has.
    store = Database(api_only.root / "state" / "state.db")
    try:
        q.cancel_run(store, run_id)
    finally:
        store.close()
    shown = api.call("GET", f"/v1/runs/{run_id}")
    assert shown["state"] == "cancelled" and shown["counts"] == {"cancelled": 2} and shown["done"], shown
    assert api.call("GET", f"/v1/runs/{other}")["counts"] == {"pending": 2}


def test_a_change_stored_through_the_api_shows_in_the_next_read(api_only, tmp_path):
    api, (run_id, other) = two_pending_runs(api_only, tmp_path)
    api.call("POST", f"/v1/runs/{run_id}/cancel")
    shown = api.call("GET", f"/v1/runs/{run_id}")
    assert shown["state"] == "cancelled" and shown["counts"] == {"cancelled": 2}, shown
    api.call("POST", f"/v1/runs/{run_id}/retry")
    again = api.call("GET", f"/v1/runs/{run_id}")
    assert again["state"] == "active" and again["counts"] == {"pending": 2} and not again["done"], again
    assert api.call("GET", f"/v1/runs/{other}")["counts"] == {"pending": 2}


def many_reads(d: Daemon, path: str, clients: int = 100) -> list:
    """`clients` concurrent GETs of `path`: the answers (or ApiErrors), all sent before any is answered."""
    async def read_all():
        api = AsyncApi(str(d.socket))
        try:
            return await asyncio.gather(*(api.call("GET", path) for _ in range(clients)), return_exceptions=True)
        finally:
            await api.close()
    return asyncio.run(read_all())


def test_concurrent_reads_that_share_one_store_read_never_predate_a_commit(api_only, tmp_path):
    """Polls that arrive together share one read of the store (per run and store version). With
    pollers keeping reads under way all the time, a change committed before a poll asked (here a
    cancel by another process, then a retry through the API) shows in every answer to it."""
    api, (run_id, other) = two_pending_runs(api_only, tmp_path)
    path = f"/v1/runs/{run_id}"

    async def check() -> None:
        client = AsyncApi(str(api_only.socket))
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                await client.call("GET", path)

        pollers = [asyncio.create_task(poll()) for _ in range(30)]
        store = Database(api_only.root / "state" / "state.db")
        try:
            for _ in range(5):
                await asyncio.sleep(0.02)  # reads under way when the change lands
                q.cancel_run(store, run_id)
                answers = await asyncio.gather(*(client.call("GET", path) for _ in range(30)))
                assert {(a["state"], a["done"]) for a in answers} == {("cancelled", True)}
                await client.call("POST", f"{path}/retry")
                answers = await asyncio.gather(*(client.call("GET", path) for _ in range(30)))
                assert {(a["state"], tuple(a["counts"].items())) for a in answers} == {("active", (("pending", 2),))}
        finally:
            stop.set()
            await asyncio.gather(*pollers, return_exceptions=True)
            store.close()
            await client.close()

    asyncio.run(check())
    assert api.call("GET", f"/v1/runs/{other}")["counts"] == {"pending": 2}


def test_concurrent_reads_of_an_unknown_run_each_get_404(api_only, tmp_path):
    two_pending_runs(api_only, tmp_path)  # runs exist, just not this one
    answers = many_reads(api_only, "/v1/runs/no-such-run", clients=50)
    assert all(isinstance(a, ApiError) and a.status == 404 and "no run 'no-such-run'" in str(a) for a in answers), answers
