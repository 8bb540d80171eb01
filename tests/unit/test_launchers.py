"""What a job's transient unit is asked for, how unit names are formed, and how exit records of
both launchers read back. The units themselves run in tests/system on a booted systemd."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from repxd.errors import ConfigError
from repxd.exec.job import exit_reason, time_limit
from repxd.exec.launcher import (
    ExitStatus,
    SubprocessLauncher,
    adoptable_status,
    exit_file,
    launch_request,
)
from repxd.exec.runtimes import Invocation
from repxd.exec.systemd_unit import SystemdLauncher, choose_launcher


class _Bus:
    def add_message_handler(self, handler) -> None:
        self.handler = handler


def _properties(request, env=None) -> dict:
    launcher = SystemdLauncher(_Bus())
    invocation = Invocation(["/work/artifacts/jobs/x/bin/main", "OUT", "IN", "PARAMS"],
                            env or {"PATH": "/usr/bin"}, Path("/work/outputs/x/out"))
    props = launcher._properties(invocation, Path("/work/outputs/x/repx"), request, Path("/work/cache/guards/x%repx.exit"))
    return {name: variant for name, variant in props}


def test_unit_names_follow_job_step_and_attempt():
    main = launch_request("0pz25wgq-total-1.0", "", 7)
    assert main.unit == "repx-job-0pz25wgq-total-1.0-7.service"
    assert main.pattern == "repx-job-0pz25wgq-total-1.0-*.service"
    step = launch_request("0pz25wgq-part+x-1.0", "branch-3.step-square", 7)
    assert step.unit == "repx-job-0pz25wgq-part_x-1.0.branch-3.step-square-7.service"
    # the job's own pattern must not match its scatter-gather steps' units
    assert not Path(step.unit).match(main.pattern.replace("total", "part_x"))


def test_unit_gets_limits_logs_and_journal_fields():
    request = launch_request("abc-nap-1.0", "", 3, run_id="r1", cpus=2, mem=96 << 20, time_seconds=300,
                             device_allow=[("/dev/nvidia0", "rw"), ("/dev/nvidiactl", "rw")])
    props = _properties(request, env={"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "HOME": "/var/lib/repx"})
    assert props["ExecStart"].value == [["/work/artifacts/jobs/x/bin/main",
                                         ["/work/artifacts/jobs/x/bin/main", "OUT", "IN", "PARAMS"], False]]
    assert props["WorkingDirectory"].value == "/work/outputs/x/out"
    assert props["Slice"].value == "repx-jobs.slice"
    assert props["MemoryMax"].value == 96 << 20
    assert props["CPUQuotaPerSecUSec"].value == 2_000_000
    assert props["RuntimeMaxUSec"].value == 300_000_000
    assert props["TasksMax"].signature == "t"
    assert props["DevicePolicy"].value == "closed"
    assert props["DeviceAllow"].value == [["/dev/nvidia0", "rw"], ["/dev/nvidiactl", "rw"]]
    assert props["StandardOutputFileToAppend"].value == "/work/outputs/x/repx/stdout.log"
    assert props["StandardErrorFileToAppend"].value == "/work/outputs/x/repx/stderr.log"
    assert props["LogExtraFields"].value == [b"REPX_JOB_ID=abc-nap-1.0", b"REPX_RUN_ID=r1"]
    assert props["CollectMode"].value == "inactive-or-failed"
    assert "User" not in props  # whom a job runs as is the agent's choice (request.user), see agent/identity.py
    # the agent's own service variables are not handed to jobs
    assert sorted(props["Environment"].value) == ["HOME=/var/lib/repx", "PATH=/usr/bin"]
    (post,) = props["ExecStopPost"].value
    assert post[1][-1] == "/work/cache/guards/x%repx.exit"


def test_unit_without_limits_asks_for_none():
    props = _properties(launch_request("abc-nap-1.0", "", 1))
    assert not {"MemoryMax", "RuntimeMaxUSec", "DevicePolicy", "DeviceAllow", "User"} & set(props)


@pytest.mark.parametrize("record, status, cause", [
    ("0", 0, None),
    ("3", 3, None),
    ("exited 0 success", 0, None),
    ("exited 4 exit-code", 4, None),
    ("killed KILL oom-kill", -9, "oom-kill"),
    ("killed TERM timeout", -15, "timeout"),
    ("dumped SEGV core-dump", -11, None),
])
def test_exit_records_read_back(tmp_path, record, status, cause):
    guard = tmp_path / "job%repx"
    exit_file(guard).write_text(record + "\n")
    read = adoptable_status(guard)
    assert read == status and read.cause == cause


@pytest.mark.parametrize("record", ["killed TERM success", "", "garbage here", "exited x exit-code"])
def test_stopped_or_unreadable_records_are_not_adopted(tmp_path, record):
    guard = tmp_path / "job%repx"
    exit_file(guard).write_text(record)
    assert adoptable_status(guard) is None


def test_reasons_name_out_of_memory_and_timeouts(tmp_path):
    guard = tmp_path / "g"
    exit_file(guard).write_text("killed KILL oom-kill")
    assert "memory limit" in exit_reason(adoptable_status(guard))
    exit_file(guard).write_text("killed TERM timeout")
    assert "time limit" in exit_reason(adoptable_status(guard))
    assert exit_reason(ExitStatus(2)) == "exited with status 2"


def test_time_limits_from_resources():
    assert time_limit("00:05:00") == 300
    assert time_limit("1-00:00:00") == 86400
    assert time_limit(None) is None and time_limit("soon") is None


def test_without_a_system_bus_auto_falls_back_and_systemd_is_an_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    with caplog.at_level(logging.INFO, logger="repx.launcher"):
        assert isinstance(asyncio.run(choose_launcher("auto")), SubprocessLauncher)
    assert [r.message for r in caplog.records if "subprocesses" in r.message] != []
    with pytest.raises(ConfigError, match='agent.launcher is "systemd"'):
        asyncio.run(choose_launcher("systemd"))
    assert isinstance(asyncio.run(choose_launcher("subprocess")), SubprocessLauncher)


def test_a_submitters_unit_hands_out_over_and_records_with_root_rights():
    props = _properties(launch_request("abc-nap-1.0", "", 1, user=1000))
    assert props["User"].value == "1000"
    ((_sh, hand_over, flags),) = props["ExecStartPreEx"].value
    assert hand_over[-2:] == ["/work/outputs/x/out", "1000"] and flags == ["privileged"]
    ((_sh, record, flags),) = props["ExecStopPostEx"].value
    assert record[-1] == "/work/cache/guards/x%repx.exit" and flags == ["privileged"]
    assert "ExecStopPost" not in props
