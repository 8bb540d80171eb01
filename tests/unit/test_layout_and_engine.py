"""Completion evidence, admission and the local engine's scheduling, without real processes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from repxd.engine.admission import Admission, AdmissionClosed
from repxd.engine.local import LocalEngine
from repxd.exec.job import JobResult
from repxd.exec.layout import OutputLayout, write_marker
from repxd.lab.graph import Outcome
from repxd.lab.loader import load_lab
from repxd.lab.writer import LabWriter


def test_completions_last_line_wins_and_corrupt_lines_are_skipped(tmp_path):
    layout = OutputLayout(tmp_path)
    for job in ("a", "b"):
        layout.repx_dir(job).mkdir(parents=True)
        write_marker(layout.repx_dir(job), "SUCCESS")
    layout.append_completion("a", Outcome.FAIL)
    with open(layout.completions, "a") as fh:
        fh.write('{"id": "a", "s": "ok"\n')  # torn line from a crash
        fh.write("not json at all\n")
        fh.write('{"id": "b", "s": "weird"}\n')
    layout.append_completion("a", Outcome.OK)
    layout.append_completion("b", Outcome.FAIL)
    assert layout.read_completions() == {"a": Outcome.OK, "b": Outcome.FAIL}
    assert layout.outcomes(["a", "b", "c"]) == {"a": Outcome.OK, "b": Outcome.FAIL}


def test_marker_scan_when_no_completions_log(tmp_path):
    layout = OutputLayout(tmp_path)
    layout.repx_dir("x").mkdir(parents=True)
    write_marker(layout.repx_dir("x"), "FAIL")
    layout.repx_dir("y").mkdir(parents=True)
    write_marker(layout.repx_dir("y"), "SUCCESS")
    assert layout.read_completions() is None
    assert layout.outcomes(["x", "y", "z"]) == {"x": Outcome.FAIL, "y": Outcome.OK}


def test_logged_success_without_marker_does_not_count(tmp_path):
    layout = OutputLayout(tmp_path)
    layout.append_completion("gone", Outcome.OK)  # its output directory was deleted since
    assert layout.outcomes(["gone"]) == {}


def test_admission_respects_slots_cpus_and_memory():
    async def scenario():
        admission = Admission(slots=3, cpus=2, mem=1000)
        active, peak = 0, 0

        async def job(cpus, mem):
            nonlocal active, peak
            async with admission.hold(cpus, mem):
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        await asyncio.gather(*(job(1, 600) for _ in range(4)))
        mem_peak, peak = peak, 0
        await asyncio.gather(*(job(1, 0) for _ in range(6)))
        cpu_peak, peak = peak, 0
        await asyncio.gather(job(64, 10**9), job(1, 0))  # larger than the machine: clamped, runs alone
        return mem_peak, cpu_peak, peak

    assert asyncio.run(scenario()) == (1, 2, 1)


def test_closed_admission_refuses_waiters():
    async def scenario():
        admission = Admission(slots=1, cpus=1, mem=0)
        async with admission.hold():
            waiter = asyncio.create_task(_enter(admission))
            await asyncio.sleep(0)
            admission.close()
            with pytest.raises(AdmissionClosed):
                await waiter

    asyncio.run(scenario())


async def _enter(admission):
    async with admission.hold():
        pass


def diamond(tmp_path: Path):
    lab = LabWriter()
    run = lab.run("d")
    top = run.job("top", "#!/bin/sh\n", outputs={"o": "$out/o"})
    left = run.job("left", "#!/bin/sh\n", inputs={"i": top.output("o")}, outputs={"o": "$out/o"})
    right = run.job("right", "#!/bin/sh\n", inputs={"i": top.output("o")}, outputs={"o": "$out/o"})
    bottom = run.job("bottom", "#!/bin/sh\n", inputs={"l": left.output("o"), "r": right.output("o")}, outputs={"o": "$out/o"})
    return load_lab(lab.write(tmp_path / "lab")), [top.id, left.id, right.id, bottom.id]


def run_engine(lab, plan, failing=(), continue_on_failure=False, slots=4):
    order = []

    async def execute(job_id, launched, chain=None, on_handle=None):
        launched()
        order.append(job_id)
        await asyncio.sleep(0.001)
        return JobResult(job_id, job_id not in failing, "exited with status 1" if job_id in failing else None)

    engine = LocalEngine(lab, plan, execute, Admission(slots, 4, 0), continue_on_failure)
    return asyncio.run(engine.run()), order


def test_engine_runs_dependencies_first(tmp_path):
    lab, (top, left, right, bottom) = diamond(tmp_path)
    summary, order = run_engine(lab, [top, left, right, bottom])
    assert summary.ok and order[0] == top and order[-1] == bottom
    assert set(summary.succeeded) == {top, left, right, bottom}


def test_engine_blocks_dependents_of_a_failure(tmp_path):
    lab, (top, left, right, bottom) = diamond(tmp_path)
    summary, order = run_engine(lab, [top, left, right, bottom], failing={left}, continue_on_failure=True)
    assert summary.failed == {left: "exited with status 1"}
    assert summary.blocked == [bottom] and right in summary.succeeded and bottom not in order


def test_engine_stops_launching_after_first_failure(tmp_path):
    lab, (top, left, right, bottom) = diamond(tmp_path)
    summary, order = run_engine(lab, [top, left, right, bottom], failing={top})
    assert order == [top] and not summary.ok
    assert set(summary.blocked) == {left, right, bottom}


def test_json_summary_counts_are_consistent(tmp_path):
    lab, ids = diamond(tmp_path)
    summary, _ = run_engine(lab, ids, failing={ids[2]}, continue_on_failure=True)
    accounted = set(summary.succeeded) | set(summary.failed) | set(summary.blocked) | set(summary.not_started)
    assert accounted == set(ids)
    json.dumps(summary.__dict__)


def test_the_completion_log_is_read_on_from_where_the_last_read_ended(tmp_path):
    """Each read sees every line appended before it, including a line whose first half was there
    at the previous read; a replaced or truncated log is read from its start."""
    layout = OutputLayout(tmp_path)
    layout.outputs.mkdir()
    layout.append_completion("a", Outcome.OK)
    assert layout.read_completions() == {"a": Outcome.OK}
    with open(layout.completions, "a") as fh:
        fh.write('{"id":"b","s":"fa')  # an append under way
    assert layout.read_completions() == {"a": Outcome.OK}
    with open(layout.completions, "a") as fh:
        fh.write('il"}\n')
    layout.append_completion("a", Outcome.FAIL)
    assert layout.read_completions() == {"a": Outcome.FAIL, "b": Outcome.FAIL}
    replacement = layout.outputs / "new.jsonl"
    replacement.write_text('{"id":"c","s":"ok"}\n' * 3)
    os.replace(replacement, layout.completions)
    assert layout.read_completions() == {"c": Outcome.OK}
    layout.completions.write_text('{"id":"d","s":"ok"}\n')  # truncated in place, then written
    assert layout.read_completions() == {"d": Outcome.OK}
    layout.completions.write_text('{"id":"e","s":"ok"}\n' * 2)  # again, now longer than before
    assert layout.read_completions() == {"e": Outcome.OK}


def test_a_fifo_in_place_of_the_completion_log_is_no_log(tmp_path):
    layout = OutputLayout(tmp_path)
    layout.repx_dir("x").mkdir(parents=True)
    write_marker(layout.repx_dir("x"), "SUCCESS")
    os.mkfifo(layout.completions)  # a read would wait for a writer that never comes
    assert layout.read_completions() is None
    assert layout.outcomes(["x", "y"]) == {"x": Outcome.OK}
