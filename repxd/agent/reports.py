"""Reports of ended attempts, sent together.

A report goes out at once when no call is under way; reports of attempts that end while one is
under way wait for it and then go out in the next call, all of them. So an idle agent reports as
soon as a job ends, and a busy one makes one call for many jobs instead of one each (with a
separate API process, a call costs both processes about as much CPU as a no-op job itself)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

MAX_BATCH = 1000  # the API's bound on one call (ReportsRequest)


class ReportSender:
    def __init__(self, send: Callable[[list[dict]], Awaitable[object]]) -> None:
        self._send = send
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def report(self, attempt: int, report: dict) -> None:
        """Returns once the API has stored the report; raises what the call raised."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(({"attempt": attempt, **report}, done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_waiting())
        await done

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await self._send([body for body, _ in batch])
            except Exception as exc:  # each waiting report's task decides what a failure means
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():  # its task may have been cancelled meanwhile
                    done.set_result(None)
