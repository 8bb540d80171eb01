"""Grid Engine parsing against outputs recorded from a real SGE 8.1.9 (tests/fixtures/sge/README.md)."""

from pathlib import Path

from repxd.targets.sge.accounting import describe, master_id, parse_qacct, parse_qstat_xml
from repxd.targets.slurm.accounting import Phase

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "sge"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_qsub_terse_gives_the_job_number_of_a_job_and_of_an_array():
    assert master_id(recorded("timeout.qsub.txt")) == "5"
    assert master_id(recorded("array.qsub.txt")) == "3"


def test_qstat_lists_running_tasks_and_expands_the_pending_range():
    states = parse_qstat_xml(recorded("qstat-xml.running.txt"))
    assert sorted(states) == ["1", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "5"]
    assert states["3.1"].state == "r" and states["3.1"].detail == "all.q@vm"
    assert states["3.6"].state == "qw"
    assert all(state.phase is Phase.WAITING for state in states.values())


def test_a_whole_pending_array_and_a_transferring_job_are_waiting():
    states = parse_qstat_xml(recorded("qstat-xml.pending.txt"))
    assert [f"3.{i}" for i in range(1, 7)] == sorted(k for k in states if k.startswith("3."))
    assert states["2"].state == "t" and states["2"].phase is Phase.WAITING


def test_qstat_lists_nothing_once_all_jobs_left():
    assert parse_qstat_xml(recorded("qstat-xml.after.txt")) == {}


def test_qacct_exit_status_of_a_job_that_ran_to_its_end():
    ok = parse_qacct(recorded("qacct-j-1.txt"))["1"]
    assert (ok.phase, ok.exit_code) == (Phase.ENDED, 0)
    fails = parse_qacct(recorded("qacct-j-2.txt"))["2"]
    assert (fails.phase, fails.exit_code) == (Phase.ENDED, 3)


def test_qacct_has_one_record_per_array_task():
    states = parse_qacct(recorded("qacct-j-3.txt"))
    assert sorted(states) == [f"3.{i}" for i in range(1, 7)]
    assert {(s.phase, s.exit_code) for s in states.values()} == {(Phase.ENDED, 0)}


def test_an_h_rt_kill_is_a_time_limit_failure():
    state = parse_qacct(recorded("qacct-j-5.txt"))["5"]
    assert state.phase is Phase.KILLED and state.exit_code == 137
    assert "time limit" in describe(state) and "h_rt" in describe(state)


def test_an_h_vmem_kill_is_only_the_programs_own_exit_status():
    # h_vmem is a ulimit: Grid Engine records nothing but the program's exit 1 (see the README).
    state = parse_qacct(recorded("qacct-j-6.txt"))["6"]
    assert (state.phase, state.exit_code) == (Phase.ENDED, 1)
