"""The real Grid Engine fixture runs jobs, and what its qstat/qacct say parses into repx's phases."""

from __future__ import annotations

import time
from pathlib import Path

from repxd.targets.sge.accounting import master_id, parse_qacct, parse_qstat_xml
from repxd.targets.slurm.accounting import Phase


def _accounted(cluster, number: str, expected: int, timeout: float = 90) -> dict:
    # qstat first (one call for all), then qacct once qstat no longer lists the job; qacct lags.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = [k for k in parse_qstat_xml(cluster.run("qstat", "-xml")) if k.partition(".")[0] == number]
        if not listed:
            try:
                states = parse_qacct(cluster.run("qacct", "-j", number))
            except Exception:
                states = {}
            if len(states) == expected:
                return states
        time.sleep(1)
    raise AssertionError(f"job {number} not accounted for within {timeout}s")


def test_an_array_runs_each_task_and_reports_each_exit_status(sge_cluster, tmp_path: Path):
    script = 'echo task $SGE_TASK_ID > "$OUT/$SGE_TASK_ID"; exit $((SGE_TASK_ID - 1))\n'
    terse = sge_cluster.run("qsub", "-terse", "-t", "1-3", "-N", "repx-test", "-o", "/dev/null", "-e", "/dev/null",
                            "-v", f"OUT={tmp_path}", "-S", "/bin/sh", stdin=script)
    number = master_id(terse)
    states = _accounted(sge_cluster, number, 3)
    assert {k: (s.phase, s.exit_code) for k, s in states.items()} == {
        f"{number}.{i}": (Phase.ENDED, i - 1) for i in (1, 2, 3)}
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == [f"task {i}\n" for i in (1, 2, 3)]


def test_an_h_rt_overrun_is_killed_and_reported_as_a_time_limit(sge_cluster):
    terse = sge_cluster.run("qsub", "-terse", "-l", "h_rt=0:0:3", "-o", "/dev/null", "-e", "/dev/null",
                            "-S", "/bin/sh", stdin="sleep 60\n")
    states = _accounted(sge_cluster, master_id(terse), 1)
    assert next(iter(states.values())).phase is Phase.KILLED
