"""The agent's reports: one call for what ended while the last call was under way."""

from __future__ import annotations

import asyncio

import pytest

from repxd.agent.reports import MAX_BATCH, ReportSender


class SlowApi:
    """Stands in for the API's reports route: records each call, answers when released."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def send(self, reports: list[dict]) -> dict:
        self.calls.append([r["attempt"] for r in reports])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {"recorded": [True] * len(reports)}


def test_reports_made_during_a_call_go_out_together_in_the_next():
    async def main():
        api = SlowApi()
        sender = ReportSender(api.send)
        first = asyncio.create_task(sender.report(1, {"outcome": "succeeded"}))
        await asyncio.sleep(0)
        later = [asyncio.create_task(sender.report(n, {"outcome": "failed", "reason": "x"})) for n in range(2, 7)]
        await asyncio.sleep(0.01)
        assert api.calls == [[1]]  # the first went at once; the others wait for it
        assert not any(t.done() for t in [first, *later])
        api.release.set()
        await asyncio.gather(first, *later)
        assert api.calls == [[1], [2, 3, 4, 5, 6]]

    asyncio.run(main())


def test_each_call_carries_the_whole_report():
    async def main():
        seen = []

        async def send(reports):
            seen.extend(reports)

        await ReportSender(send).report(7, {"outcome": "failed", "exit_status": 3, "reason": "exit 3"})
        assert seen == [{"attempt": 7, "outcome": "failed", "exit_status": 3, "reason": "exit 3"}]

    asyncio.run(main())


def test_a_failed_call_fails_every_report_in_it_and_the_next_reports_still_go():
    async def main():
        api = SlowApi(fail=RuntimeError("refused"))
        sender = ReportSender(api.send)
        waiting = [asyncio.create_task(sender.report(n, {"outcome": "succeeded"})) for n in (1, 2)]
        await asyncio.sleep(0.01)
        api.release.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert [str(r) for r in results] == ["refused", "refused"]
        api.fail = None
        await sender.report(3, {"outcome": "succeeded"})
        assert api.calls[-1] == [3]

    asyncio.run(main())


def test_a_cancelled_report_does_not_stop_the_others():
    async def main():
        api = SlowApi()
        sender = ReportSender(api.send)
        first = asyncio.create_task(sender.report(1, {"outcome": "succeeded"}))
        await asyncio.sleep(0)
        second = asyncio.create_task(sender.report(2, {"outcome": "succeeded"}))
        third = asyncio.create_task(sender.report(3, {"outcome": "succeeded"}))
        await asyncio.sleep(0.01)
        second.cancel()
        api.release.set()
        await asyncio.gather(first, third)
        with pytest.raises(asyncio.CancelledError):
            await second
        assert api.calls[0] == [1] and 3 in api.calls[1]

    asyncio.run(main())


def test_no_call_carries_more_than_the_api_takes():
    async def main():
        api = SlowApi()
        sender = ReportSender(api.send)
        tasks = [asyncio.create_task(sender.report(n, {"outcome": "succeeded"})) for n in range(2 * MAX_BATCH + 5)]
        await asyncio.sleep(0.01)
        api.release.set()
        await asyncio.gather(*tasks)
        assert [len(c) for c in api.calls] == [MAX_BATCH, MAX_BATCH, 5]
        assert sorted(n for c in api.calls for n in c) == list(range(2 * MAX_BATCH + 5))

    asyncio.run(main())
