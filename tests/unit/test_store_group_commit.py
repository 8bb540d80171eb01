"""Concurrent writes through AsyncDatabase.write share one transaction and one COMMIT, each in a
savepoint of its own: every run is stored once with all its jobs, and a submit whose rows break
a constraint is undone alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from repxd.api.app import StoreCommits
from repxd.store import queries as q
from repxd.store import reads
from repxd.store.db import AsyncDatabase, Database
from repxd.store.records import RunRecord

SUBMITS = 100
JOBS = 10


def planned_run(number: int) -> tuple[RunRecord, list[q.PlannedJob]]:
    """A run of a chain of JOBS jobs (each after the one before)."""
    run = RunRecord(id=f"run{number:04d}", lab_path="/labs/x", lab_id="lab", selection=["r"], target="local",
                    base_path="/base", options={}, submitter_uid=1000 + number, submitter_name=f"user{number}",
                    state="active", created=time.time(), finished=None)
    jobs = [q.PlannedJob(f"job{i}", [(f"job{i - 1}", False)] if i else [], 1, 0, False) for i in range(JOBS)]
    return run, jobs


def stored(path) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
    """What another connection sees: runs, and per run its jobs, its dependency edges and its
    submitted events."""
    with sqlite3.connect(path) as conn:
        runs = dict(conn.execute("SELECT id, count(*) FROM runs GROUP BY id"))
        jobs = dict(conn.execute("SELECT run_id, count(*) FROM jobs GROUP BY run_id"))
        deps = dict(conn.execute("SELECT run_id, count(*) FROM job_deps GROUP BY run_id"))
        events = dict(conn.execute("SELECT run_id, count(*) FROM events WHERE kind='run.submitted' GROUP BY run_id"))
    return runs, jobs, deps, events


@pytest.fixture
def store(tmp_path):
    database = AsyncDatabase(Database(tmp_path / "state.db"))
    yield database
    database.close()


async def submit_all(store: AsyncDatabase, planned: list, hold_writer: bool) -> list:
    """create_run for every planned run at once; `hold_writer`: the store's thread is busy with
    other work until all of them are queued (as under load, when a group is being committed)."""
    gate = threading.Event()
    busy = asyncio.ensure_future(store.run(gate.wait, 30)) if hold_writer else None
    writes = [asyncio.ensure_future(store.write(q.create_run, store.db, run, jobs)) for run, jobs in planned]
    await asyncio.sleep(0)  # every write task runs up to its wait: all are queued
    gate.set()
    if busy is not None:
        await busy
    return await asyncio.gather(*writes, return_exceptions=True)


def test_queued_submits_are_one_commit_and_a_failing_one_is_undone_alone(store, tmp_path):
    planned = [planned_run(n) for n in range(SUBMITS)]
    bad_run, bad_jobs = planned[37]
    bad_jobs.append(q.PlannedJob("job3", [], 1, 0, False))  # the same job twice: the jobs' primary key refuses it
    commits = store.db.commits
    outcomes = asyncio.run(submit_all(store, planned, hold_writer=True))

    assert isinstance(outcomes[37], sqlite3.IntegrityError)
    assert [o.id for n, o in enumerate(outcomes) if n != 37] == [run.id for n, (run, _) in enumerate(planned) if n != 37]
    assert store.db.commits - commits == 1
    runs, jobs, deps, events = stored(tmp_path / "state.db")
    good = {run.id for run, _ in planned} - {bad_run.id}
    assert runs == dict.fromkeys(good, 1)  # its run row, inserted before its jobs failed, is gone too
    assert jobs == dict.fromkeys(good, JOBS)
    assert deps == dict.fromkeys(good, JOBS - 1)
    assert events == dict.fromkeys(good, 1)


def test_submits_at_once_share_commits_and_each_is_stored_once(store, tmp_path):
    planned = [planned_run(n) for n in range(SUBMITS)]
    commits = store.db.commits
    outcomes = asyncio.run(submit_all(store, planned, hold_writer=False))

    assert [o.id for o in outcomes] == [run.id for run, _ in planned]
    assert 1 <= store.db.commits - commits < SUBMITS
    runs, jobs, _deps, events = stored(tmp_path / "state.db")
    assert runs == dict.fromkeys((run.id for run, _ in planned), 1)
    assert jobs == dict.fromkeys(runs, JOBS)
    assert events == dict.fromkeys(runs, 1)


def test_a_run_submitted_twice_in_one_group_is_stored_once(store, tmp_path):
    """The second submit of the same run id breaks the runs' primary key: it alone fails."""
    run, jobs = planned_run(1)
    outcomes = asyncio.run(submit_all(store, [(run, jobs), (run, jobs), planned_run(2)], hold_writer=True))
    assert outcomes[0].id == "run0001" and outcomes[2].id == "run0002"
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    runs, jobs_stored, _deps, events = stored(tmp_path / "state.db")
    assert runs == {"run0001": 1, "run0002": 1}
    assert jobs_stored == {"run0001": JOBS, "run0002": JOBS}
    assert events == {"run0001": 1, "run0002": 1}


def test_the_api_exposes_the_commits_as_repx_store_commits_total(store):
    registry = CollectorRegistry()
    registry.register(StoreCommits(store.db))
    before = store.db.commits
    asyncio.run(submit_all(store, [planned_run(n) for n in range(10)], hold_writer=True))
    exposed = generate_latest(registry).decode()
    assert f"repx_store_commits_total {float(before + 1)}" in exposed, exposed


@pytest.mark.parametrize("already_done", [0, 4, JOBS], ids=["none-done", "some-done", "all-done"])
def test_the_stored_run_returned_is_what_a_read_of_it_answers(tmp_path, already_done):
    """The API answers a submit with create_run's return, not with a read of the store."""
    database = Database(tmp_path / "state.db")
    run, jobs = planned_run(1)
    for job in jobs[:already_done]:
        job.done = True
    returned = q.create_run(database, run, jobs)
    assert returned == reads.get_run(database, run.id)
    assert returned.state == ("succeeded" if already_done == JOBS else "active")
    database.close()
