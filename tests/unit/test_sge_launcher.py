"""The Grid Engine launcher's translations: resources into qsub options, and recorded qacct records
(tests/fixtures/sge, from a real SGE 8.1.9) into the exit status a repx job gets."""

from pathlib import Path

from repxd.targets.commands import LocalCommands
from repxd.targets.sge.accounting import SgeJobState, parse_qacct
from repxd.targets.sge.launcher import SgeDirectives, SgeLauncher

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "sge"


def test_neutral_resource_keys_become_qsub_options():
    resources = {"partition": "short.q", "account": "proj", "cpus-per-task": 4, "mem": "1.5G", "time": "01:02:03",
                 "qsub_opts": ["-P", "physics"]}
    assert SgeDirectives.from_resources(resources, "smp").options() == [
        "-q", "short.q", "-A", "proj", "-pe", "smp", "4", "-l", "h_vmem=1536M", "-l", "h_rt=3723", "-P", "physics"]


def test_cpus_are_not_asked_for_without_a_parallel_environment():
    assert SgeDirectives.from_resources({"cpus-per-task": 4, "queue": "all.q"}, None).options() == ["-q", "all.q"]


def test_recorded_endings_give_exit_statuses_and_reasons(tmp_path):
    launcher = SgeLauncher(LocalCommands())
    guard = tmp_path / "guard"  # no exit file: Grid Engine's word decides
    (failed,) = parse_qacct((RECORDED / "qacct-j-2.txt").read_text()).values()
    assert launcher.outcome(failed, guard) == 3
    (overrun,) = parse_qacct((RECORDED / "qacct-j-5.txt").read_text()).values()
    status = launcher.outcome(overrun, guard)
    assert status.cause == "timeout" and "time limit" in status.reason and "Grid Engine job 5" in status.reason


def test_the_exit_file_wins_and_a_vanished_job_without_one_is_lost(tmp_path):
    launcher = SgeLauncher(LocalCommands())
    guard = tmp_path / "guard"
    assert launcher.outcome(SgeJobState("7.1", "gone"), guard) is None
    guard.with_name("guard.exit").write_text("4\n")
    assert launcher.outcome(SgeJobState("7.1", "gone"), guard) == 4
