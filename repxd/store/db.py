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
        # Reentrant: a group's transaction (write_group) holds it while each call's own transaction
        # (a savepoint of the group's) takes it again.
        self._lock = threading.RLock()
        self.commits = 0  # transactions this connection committed (repx_store_commits_total)
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
        on a lock upgrade; other processes wait (busy_timeout). Inside a group's transaction
        (write_group) it is a savepoint: undone alone when it raises, committed with the group."""
        with self._lock:
            if self.conn.in_transaction:
                with self._savepoint():
                    yield self.conn
                return
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
                self.commits += 1
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

    @contextmanager
    def _savepoint(self):
        self.conn.execute("SAVEPOINT call")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # else SQLite ended the whole transaction (a full disk): write_group fails
                self.conn.execute("ROLLBACK TO call")
                self.conn.execute("RELEASE call")
            raise
        self.conn.execute("RELEASE call")

    def write_group(self, calls: list[tuple[Callable, tuple]]) -> list[tuple[bool, object]]:
        """Run each fn(*args) of `calls` in one transaction and one COMMIT, each in a savepoint of
        its own: a call that raises is undone alone and answered with its exception, (False, exc);
        the others are stored together and answered (True, result). When the commit fails (a full
        disk), none is stored and the error is raised."""
        outcomes: list[tuple[bool, object]] = []
        with self.transaction():
            for fn, args in calls:
                try:
                    with self._savepoint():
                        outcomes.append((True, fn(*args)))
                except Exception as exc:
                    if not self.conn.in_transaction or is_disk_full(exc):
                        raise  # gone with the calls before this one, or the next would meet the full disk too
                    outcomes.append((False, exc))
        return outcomes

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
    """Runs store functions on the database's own thread. `write` groups the writes that queue up
    while that thread is busy into one transaction: at 200 concurrent submits, a COMMIT each was
    the largest part of the thread's time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repx-sqlite")
        self._queued: list[tuple[Callable, tuple, asyncio.Future]] = []  # writes no group has taken yet
        self._queued_lock = threading.Lock()
        self._group_pending = False  # a group is queued on the thread and has not taken its writes yet

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def write(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a savepoint of a transaction shared with the writes queued beside it
        (Database.write_group): all-or-nothing for this caller, which gets its own result or
        exception; one COMMIT for the group."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._queued_lock:
            self._queued.append((fn, args, future))
            start, self._group_pending = not self._group_pending, True
        if start:
            self._executor.submit(self._write_group, loop)
        return await future

    def _write_group(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._queued_lock:
            group, self._queued, self._group_pending = self._queued, [], False
        try:
            outcomes = self.db.write_group([(fn, args) for fn, args, _ in group])
        except BaseException as exc:
            outcomes = [(False, exc)] * len(group)
        loop.call_soon_threadsafe(_answer, [future for _, _, future in group], outcomes)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.db.close()


def _answer(futures: list[asyncio.Future], outcomes: list[tuple[bool, object]]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.cancelled():  # its caller went away; the write stands
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


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
