"""The SQLite connection: WAL, migrations, transactions, and an asyncio front that runs every
statement on one dedicated thread so nothing blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .migrations import MIGRATIONS

T = TypeVar("T")
log = logging.getLogger("repx.store")


class StoreFull(Exception):
    """A write found the store's disk full. SQLite has rolled the transaction back: nothing
    half-written, and the next write tries again (so the store recovers once space returns)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the daemon's store {path} is read-only for now: its disk is full; "
                         "writes are refused until space is freed there (reads keep working)")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class Database:
    """One connection, used from one thread at a time (the executor's)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # every user's runs: the daemon's alone
        if not self.path.exists():
            _create_whole(self.path)
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.Lock()
        self.full_since: float | None = None  # when a write last found the disk full; None once one succeeds
        self.recovered_at = 0.0  # when writes worked again after a full disk (the scheduler spares leases a while)
        self.migrate()

    @property
    def version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        with self.transaction():
            current = self.version
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE: the write lock is taken up front, so a transaction never fails half-way
        on a lock upgrade; other processes wait (busy_timeout)."""
        with self._lock:
            changes = self.conn.total_changes
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                        self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                if self.full_since is None:
                    self.full_since = time.time()
                    log.error("%s", StoreFull(self.path))
                raise StoreFull(self.path) from None
            if self.full_since is not None and self.conn.total_changes > changes:  # a write got through
                log.warning("the store %s takes writes again (its disk was full for %.0fs)",
                            self.path, time.time() - self.full_since)
                self.full_since, self.recovered_at = None, time.time()

    def read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


def _create_whole(path: Path) -> None:
    """A new database appears under its name only with its header written (in WAL mode), so a
    zero-length state.db is never repxd's doing and can be refused as lost (store.startup).
    Roles starting at once on a new state_dir each make their own and link it in; the first
    link wins, and the others open that one."""
    fresh = path.with_name(f"{path.name}.new.{os.getpid()}")
    fresh.unlink(missing_ok=True)
    conn = sqlite3.connect(fresh, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    try:
        os.link(fresh, path)
    except FileExistsError:
        pass
    finally:
        fresh.unlink()


class AsyncDatabase:
    """Runs store functions on the database's own thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repx-sqlite")

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.db.close()


class ChangeWatch:
    """Whether anything was stored since, asked from the event loop without waiting: a connection
    of its own that never writes, so every commit (this process's or another's) moves its PRAGMA
    data_version. It reads only the WAL index; when that is locked (a recovery), it answers None
    at once (busy timeout 0) and the caller reads the store as usual."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")

    def version(self) -> int | None:
        """Different from an earlier answer when a commit came in between; None: cannot tell now."""
        try:
            return self.conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    def close(self) -> None:
        self.conn.close()


def open_database(path: Path) -> Database:
    return Database(path)
