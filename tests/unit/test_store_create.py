"""A new store made by several roles starting at once on an empty state_dir."""

from __future__ import annotations

import multiprocessing
import sqlite3

from repxd.store.db import Database

STARTERS = 6


def _open(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        db = Database(path)
        db.close()
        results.put("ok")
    except Exception as exc:  # the test reports what each starter met
        results.put(f"{type(exc).__name__}: {exc}")


def test_roles_creating_the_store_at_once_all_open_the_same_one(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f"round{round_}" / "state.db"
        barrier, results = ctx.Barrier(STARTERS), ctx.Queue()
        starters = [ctx.Process(target=_open, args=(str(path), barrier, results)) for _ in range(STARTERS)]
        for p in starters:
            p.start()
        outcomes = [results.get(timeout=60) for _ in starters]
        for p in starters:
            p.join(timeout=60)
        assert outcomes == ["ok"] * STARTERS, outcomes
        # One database, whole, and no starter's private copy left beside it.
        assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["state.db"]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
