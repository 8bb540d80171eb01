"""Status reads of an active run are answered from memory until the store changes: a poll must
never show a run older than what was stored before it asked, whoever stored it."""

from __future__ import annotations

import pytest
from service import Daemon

from repxd.api.client import Api
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
