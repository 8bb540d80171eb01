"""Reading what SLURM says, against real outputs recorded on slurm-wlm 22.05
(tests/fixtures/slurm/README.md names the command behind each file). The recordings carry more
columns than repx asks for; the tests take the columns repx's format names, in its order."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from repxd.targets.commands import LocalCommands
from repxd.targets.slurm.accounting import Phase, parse_sacct, parse_squeue, task_ids
from repxd.targets.slurm.launcher import SlurmLauncher

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
# recorded sacct: JobIDRaw,JobID,JobName,State,ExitCode,DerivedExitCode,Elapsed,NodeList,...
SACCT_COLUMNS = (1, 3, 4, 7)  # -> JobID,State,ExitCode,NodeList
# recorded squeue: %A|%i|%F|%K|%j|%T|%r|%N|%l
SQUEUE_COLUMNS = (1, 5, 6, 7)  # -> %i|%T|%r|%N


def recorded(name: str, columns: tuple[int, ...]) -> str:
    lines = (FIXTURES / name).read_text().splitlines()
    return "\n".join("|".join(line.split("|")[c] for c in columns) for line in lines if line.strip())


def test_states_of_real_endings():
    assert parse_sacct(recorded("timeout.sacct.txt", SACCT_COLUMNS))["1"].phase is Phase.KILLED
    node = parse_sacct(recorded("node-down.sacct.txt", SACCT_COLUMNS))
    assert {s.state for s in node.values()} == {"NODE_FAIL"} and all(s.phase is Phase.LOST for s in node.values())
    dependency = parse_sacct(recorded("dependency.sacct.txt", SACCT_COLUMNS))
    assert (dependency["13"].phase, dependency["13"].exit_code) == (Phase.ENDED, 3)
    assert dependency["14"].phase is Phase.CANCELLED
    assert "13.batch" not in dependency  # steps are not jobs


def test_array_tasks_not_yet_started_are_expanded_not_lost():
    assert task_ids("3_[2-9%2]") == [f"3_{i}" for i in range(2, 10)]
    assert task_ids("7_[1,4-5]") == ["7_1", "7_4", "7_5"]
    running = parse_squeue(recorded("array.squeue-running.txt", SQUEUE_COLUMNS))
    assert running["3_0"].state == "RUNNING" and running["3_0"].nodes == "n1"
    assert running["3_9"].phase is Phase.WAITING
    cancelled = parse_sacct(recorded("cancel-array.sacct.txt", SACCT_COLUMNS))
    assert {cancelled[f"21_{i}"].phase for i in range(6)} == {Phase.CANCELLED}
    assert cancelled["21_0"].detail == "by 0"


@pytest.mark.parametrize("recording,cause,words", [
    ("oom", "oom-kill", ("memory limit", "OUT_OF_MEMORY", "n1")),
    ("timeout", "timeout", ("time limit", "TIMEOUT")),
])
def test_a_job_killed_by_a_limit_is_reported_with_that_reason(tmp_path, recording, cause, words):
    """On this kind of cluster (no cgroup plugin) a memory kill is FAILED 0:9 in sacct; slurmstepd's
    line in the batch output says what happened, and the job's stderr.log gets it."""
    state = parse_sacct(recorded(f"{recording}.sacct.txt", SACCT_COLUMNS))
    (job_id,) = [k for k in state if "." not in k]
    logs = tmp_path / "batch"
    logs.mkdir()
    if recording == "oom":
        shutil.copy(FIXTURES / "oom.job-output.txt", logs / f"{job_id}.out")
    stderr = tmp_path / "stderr.log"
    stderr.write_text("")
    launcher = SlurmLauncher(LocalCommands(), log_dir=logs)
    status = launcher.outcome(state[job_id], tmp_path / "guard", stderr)
    assert status.cause == cause and all(w in status.reason for w in words), status.reason
    if recording == "oom":
        assert "exceeded memory limit" in stderr.read_text()


def test_a_lost_job_has_no_status_unless_its_exit_file_says(tmp_path):
    lost = parse_sacct(recorded("node-down.sacct.txt", SACCT_COLUMNS))
    state = next(iter(lost.values()))
    launcher = SlurmLauncher(LocalCommands(), log_dir=tmp_path)
    assert launcher.outcome(state, tmp_path / "guard", None) is None
