"""Wake-ups between the API and the scheduler, so that neither waits for its next poll.

The API wakes the scheduler when jobs may have become placeable or room was freed (a submit, a
report, a cancel); the scheduler wakes the API's claim long-polls when it placed jobs. In one
process (`repxd all`) these are asyncio events. Roles in separate processes share the store's
file, hence a machine: each listens on a Unix datagram socket under `<state_dir>/wake/` and rings
the other's. A ring that cannot be delivered (the other role is down, or already has rings
queued) is dropped: both roles poll as well, so a lost ring costs at most a poll interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from pathlib import Path

from ..store.db import AsyncDatabase

log = logging.getLogger("repx.wakeups")
ROLES = ("api", "scheduler")


class Wakeups:
    def __init__(self) -> None:
        self.schedule = asyncio.Event()
        self.placed = asyncio.Event()
        # Placements so far: a claim that found nothing compares it with the count it saw before
        # asking, so a pulse while it asked (not waiting yet) does not cost it a poll interval.
        self.placements = 0
        self._elsewhere: list[tuple[str, str]] = []  # (role, its socket) in other processes
        self._listening: list[socket.socket] = []
        self._bell: socket.socket | None = None

    def wake_scheduler(self) -> None:
        self.schedule.set()
        self._ring("scheduler")

    def pulse_placed(self) -> None:
        self._placed_here()
        self._ring("api")

    def _placed_here(self) -> None:
        self.placements += 1
        self.placed.set()  # wakes every current waiter
        self.placed.clear()

    def across_processes(self, state_dir: Path, role: str) -> None:
        """This process runs `role` alone: listen for the other role's rings, and ring it."""
        directory = state_dir / "wake"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"{role}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket of an earlier run: the role's lock says none runs now
            listener.bind(str(path))
        except OSError as exc:  # e.g. a state_dir too long for a socket path: polling still works
            listener.close()
            log.warning("cannot listen for wake-ups at %s (%s); %s polls only", path, exc, role)
        else:
            listener.setblocking(False)
            asyncio.get_running_loop().add_reader(listener.fileno(), self._rung, listener, role)
            self._listening.append(listener)
        self._elsewhere = [(other, str(directory / f"{other}.sock")) for other in ROLES if other != role]
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.setblocking(False)

    def _rung(self, listener: socket.socket, role: str) -> None:
        with contextlib.suppress(BlockingIOError):
            while listener.recv(64):
                pass
        if role == "scheduler":
            self.schedule.set()
        else:
            self._placed_here()

    def _ring(self, role: str) -> None:
        if self._bell is None:
            return
        for other, path in self._elsewhere:
            if other == role:
                with contextlib.suppress(OSError):  # down, or rings queued already
                    self._bell.sendto(b"!", path)


_WAKEUPS: weakref.WeakKeyDictionary[AsyncDatabase, Wakeups] = weakref.WeakKeyDictionary()


def wakeups(database: AsyncDatabase) -> Wakeups:
    """The wake-ups of the roles sharing `database` in this process."""
    if database not in _WAKEUPS:
        _WAKEUPS[database] = Wakeups()
    return _WAKEUPS[database]
