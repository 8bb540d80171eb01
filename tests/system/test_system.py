"""The system tier: repx installed on a booted Debian (systemd as PID 1) and driven as an
operator would. The scenarios are shared with the NixOS VM tests (nixos-tests/)."""

from __future__ import annotations

import pytest
import scenarios
from rootfs import RESEARCHER, repx_machine

pytestmark = pytest.mark.system

SIMPLE = "/srv/labs/simple"
NAPS = "/srv/labs/naps"
SWEEP = "/srv/labs/sweep-scatter"
NAP_MEMORY = 96 * 1024 * 1024  # the naps Lab asks for mem = "96M"


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    with repx_machine(tmp_path_factory.mktemp("system")) as vm:
        yield vm


@pytest.fixture(scope="module")
def unit_job(machine):
    """The job id of a run watched while it ran as a transient unit."""
    return scenarios.jobs_run_as_transient_units(machine, NAPS, "nap-10s", NAP_MEMORY)


def test_units_become_ready_with_status_text(machine):
    scenarios.units_become_ready(machine)


def test_example_lab_runs_through_the_service(machine):
    scenarios.example_lab_runs(machine, SIMPLE)


def test_jobs_run_as_the_researcher_who_submitted_them(machine):
    scenarios.jobs_run_as_their_submitter(machine, RESEARCHER, SWEEP, "sweep")


def test_jobs_run_as_transient_units_with_their_limits(unit_job):
    assert unit_job.endswith("-nap-1.0")


def test_journal_finds_a_job_by_its_id(machine, unit_job):
    scenarios.journal_has_job_fields(machine, unit_job)


def test_time_limit_stops_a_job_with_a_reason(machine):
    scenarios.time_limit_is_enforced(machine, NAPS, "nap-overtime")


def test_agent_restart_keeps_the_running_job(machine):
    scenarios.agent_restart_keeps_job(machine, NAPS, "nap-20s")


def test_cancel_stops_the_job_unit(machine):
    scenarios.cancel_stops_the_unit(machine, NAPS, "nap-30s")


def test_watchdog_restarts_a_frozen_scheduler(machine):
    scenarios.watchdog_restarts_frozen_scheduler(machine)


def test_reboot_mid_run_completes_the_run(machine):
    scenarios.reboot_mid_run_completes(machine, NAPS, "nap-30s")
