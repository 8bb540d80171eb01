"""Checks before a role uses the state directory: no other daemon holds the same role there, and
the database is whole. Each failure is one sentence naming the file and what to do (exit 2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

from ..errors import RepxError

SQLITE_HEADER = b"SQLite format 3\x00"


class StateDirBusy(RepxError):
    """Another repxd runs this role on the same state directory."""


class StoreCorrupt(RepxError):
    """state.db is not a whole SQLite database."""


def lock_role(state_dir: Path, role: str) -> int:
    """Hold `<state_dir>/<role>.lock` (flock) for the life of the process; returns its descriptor.
    A second `repxd all` (or `api`, `scheduler`) on the same state directory stops here, before it
    touches the first one's socket or store."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / f"{role}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirBusy(f"another repxd (pid {holder}) runs the {role} on {state_dir} (it holds {path}); "
                           "stop it first, or give this one its own state_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_database(path: Path) -> None:
    """Refuse a state.db that is not whole: a damaged header, pages PRAGMA quick_check rejects, or
    a zero-length file. repxd creates its database whole (see db.Database), so a zero-length one
    lost its contents — starting afresh on it would silently forget every run. A missing file is
    a new store."""
    fix = ("restore it from a backup, or move it aside to start with an empty store "
           "(the runs it recorded are then forgotten)")
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreCorrupt(f"{path}: cannot read the daemon's database ({exc.strerror})") from None
    if not header:
        raise StoreCorrupt(f"{path} is empty (0 bytes): the daemon's database lost its contents; {fix}")
    if header != SQLITE_HEADER:
        raise StoreCorrupt(f"{path} is not a SQLite database (its header is damaged); {fix}")
    problem = None
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        if rows != [("ok",)]:
            problem = str(rows[0][0]).replace("\n", " ") if rows else "no answer"
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    if problem is not None:
        raise StoreCorrupt(f"{path} is damaged (PRAGMA quick_check: {problem}); {fix}")
