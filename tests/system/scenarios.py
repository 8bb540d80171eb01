"""Operator scenarios against a machine running repx under systemd.

Each function takes a machine with the NixOS test driver's interface, so the same code drives
the systemd-nspawn container of tests/system and the VMs of nixos-tests/. The parameters are typed
with the driver's own classes: the driver's mypy run and tests/typecheck (against a stub of the
driver) check every call. Commands run as the driver runs them, under `set -euo pipefail`: a
pipeline fails if any part does, so no command ends in `| grep -q` (its early exit kills the
writer with SIGPIPE). Only shell commands an operator would type are used: systemctl,
journalctl, repxctl. Standard library only at run time."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from test_driver.machine import BaseMachine, QemuMachine

ROLE_UNITS = ("repx-api.service", "repx-scheduler.service", "repx-agent.service")
BASE = "/var/lib/repx/work"


def units_become_ready(machine: BaseMachine) -> None:
    """Every role is Type=notify: `active` only after READY=1, with its STATUS= text shown."""
    machine.wait_for_unit("repx.target")
    for unit in ROLE_UNITS:
        machine.wait_for_unit(unit)
        assert machine.succeed(f"systemctl show -p Type --value {unit}").strip() == "notify"
        machine.wait_until_succeeds(f"test -n \"$(systemctl show -p StatusText --value {unit})\"", timeout=30)
        status = machine.succeed(f"systemctl status --no-pager {unit}")
        assert "Status: \"" in status, f"systemctl status {unit} shows no STATUS= text:\n{status}"
    machine.succeed("repxctl status")


def submit(machine: BaseMachine, lab: str, selection: str) -> str:
    """`repxctl run --detach`; returns the run id."""
    return machine.succeed(f"repxctl run {shlex.quote(selection)} --lab {shlex.quote(lab)} --detach").strip().splitlines()[-1]


def run_details(machine: BaseMachine, run_id: str) -> dict[str, Any]:
    return json.loads(machine.succeed(f"repxctl runs {run_id} --json"))


def wait_for_run(machine: BaseMachine, run_id: str, timeout: int = 300, state: str = "succeeded") -> dict[str, Any]:
    machine.wait_until_succeeds(f"repxctl runs {run_id} --json | grep -E '\"state\": \"(succeeded|failed|cancelled)\"' >/dev/null",
                                timeout=timeout)
    details = run_details(machine, run_id)
    if details["state"] != state:
        jobs = machine.succeed(f"repxctl jobs --run {run_id}")
        raise AssertionError(f"run {run_id} ended {details['state']}, expected {state}:\n{jobs}")
    return details


def run_jobs(machine: BaseMachine, run_id: str) -> list[dict[str, Any]]:
    return json.loads(machine.succeed(f"repxctl jobs --run {run_id} --json"))


def example_lab_runs(machine: BaseMachine, lab: str, selection: str = "@all") -> str:
    """An example Lab runs to success through the daemon; outputs land in the upstream layout."""
    run_id = submit(machine, lab, selection)
    wait_for_run(machine, run_id)
    for job in run_jobs(machine, run_id):
        assert job["state"] == "succeeded", job
        machine.succeed(f"test -e {BASE}/outputs/{job['job_id']}/repx/SUCCESS")
        # results are for the researchers to read, not only for the service user
        machine.succeed(f"setpriv --reuid=nobody --regid=nogroup --clear-groups ls {BASE}/outputs/{job['job_id']}/out "
                        f"| while read -r f; do setpriv --reuid=nobody --regid=nogroup --clear-groups cat "
                        f"{BASE}/outputs/{job['job_id']}/out/$f >/dev/null || exit 1; done")
    return run_id


def jobs_run_as_their_submitter(machine: BaseMachine, user: str, lab: str, selection: str) -> None:
    """With agent.run_as_submitter, a researcher's jobs run as that researcher: the files in
    `out/` are theirs, the bookkeeping in `repx/` stays the service's."""
    run_id = machine.succeed(f"runuser -u {user} -- repxctl run {shlex.quote(selection)} --lab {shlex.quote(lab)} "
                             "--detach").strip().splitlines()[-1]
    details = wait_for_run(machine, run_id)
    assert details["submitter_name"] == user, details
    for job in run_jobs(machine, run_id):
        root = f"{BASE}/outputs/{job['job_id']}"
        owners = set(machine.succeed(f"find {root} -path '*/out/*' -type f -exec stat -c %U {{}} +").split())
        assert owners == {user}, f"{root}: out/ files owned by {owners}"
        assert machine.succeed(f"stat -c %U {root}/repx/SUCCESS").strip() != user


def _running_unit(machine: BaseMachine, pattern: str = "repx-job-*") -> str:
    machine.wait_until_succeeds(f"test -n \"$(systemctl list-units --no-legend --plain --state=active '{pattern}')\"",
                                timeout=120)
    return machine.succeed(f"systemctl list-units --no-legend --plain --state=active '{pattern}'").split()[0]


def jobs_run_as_transient_units(machine: BaseMachine, lab: str, run: str, memory_max: int) -> str:
    """While a job runs it is a transient unit in repx-jobs.slice with the requested limits;
    the unit is collected once it has ended. Returns the job id."""
    run_id = submit(machine, lab, run)
    unit = _running_unit(machine)
    props = dict(line.split("=", 1) for line in machine.succeed(
        f"systemctl show -p Slice -p MemoryMax -p CPUQuotaPerSecUSec -p RuntimeMaxUSec -p CollectMode {unit}").splitlines() if "=" in line)
    assert props["Slice"] == "repx-jobs.slice", props
    assert int(props["MemoryMax"]) == memory_max, props
    assert props["CollectMode"] == "inactive-or-failed", props
    assert props["RuntimeMaxUSec"] not in ("infinity", ""), props
    (job,) = run_jobs(machine, run_id)
    assert unit.startswith(f"repx-job-{job['job_id']}-"), (unit, job)
    wait_for_run(machine, run_id)
    machine.wait_until_fails(f"test -n \"$(systemctl list-units --no-legend --all '{unit}')\"", timeout=30)
    return job["job_id"]


def journal_has_job_fields(machine: BaseMachine, job_id: str) -> None:
    """`journalctl REPX_JOB_ID=<id>` returns that job's lines (the agent's record of it)."""
    lines = machine.succeed(f"journalctl --no-pager -o cat REPX_JOB_ID={job_id}")
    assert f"running {job_id}" in lines, f"no start line for {job_id} in the journal:\n{lines}"
    assert "succeeded" in lines, f"no completion line for {job_id} in the journal:\n{lines}"
    entries = [json.loads(line) for line in machine.succeed(f"journalctl --no-pager -o json REPX_JOB_ID={job_id}").splitlines()]
    assert {entry["REPX_JOB_ID"] for entry in entries} == {job_id}
    assert {entry.get("REPX_ROLE") for entry in entries} == {"agent"}, "lines of other roles matched"
    assert all(entry.get("REPX_RUN_ID") for entry in entries), "a job line without its run id"


def time_limit_is_enforced(machine: BaseMachine, lab: str, run: str) -> None:
    """A job past its `time` limit is stopped by systemd (RuntimeMaxSec) and fails saying why."""
    run_id = submit(machine, lab, run)
    wait_for_run(machine, run_id, timeout=120, state="failed")
    (job,) = run_jobs(machine, run_id)
    assert job["state"] == "failed" and "time limit" in (job["reason"] or ""), job
    machine.fail(f"test -e {BASE}/outputs/{job['job_id']}/out/rested.txt")


def agent_restart_keeps_job(machine: BaseMachine, lab: str, run: str) -> None:
    """Restarting the agent under a running job leaves the job's unit running (same process);
    the new agent re-attaches and the result is recorded exactly once."""
    run_id = submit(machine, lab, run)
    unit = _running_unit(machine)
    pid = machine.succeed(f"systemctl show -p MainPID --value {unit}").strip()
    assert pid != "0"
    machine.succeed("systemctl restart repx-agent.service")
    machine.wait_for_unit("repx-agent.service")
    assert machine.succeed(f"systemctl show -p MainPID --value {unit}").strip() == pid, "the job's process changed"
    wait_for_run(machine, run_id)
    (job,) = run_jobs(machine, run_id)
    assert job["tries"] == 1, job
    recorded = machine.succeed(f"grep -c '\"{job['job_id']}\"' {BASE}/outputs/completions.jsonl").strip()
    assert recorded == "1", f"{job['job_id']} recorded {recorded} times in completions.jsonl"
    machine.succeed(f"grep -q rested {BASE}/outputs/{job['job_id']}/out/rested.txt")


def cancel_stops_the_unit(machine: BaseMachine, lab: str, run: str) -> None:
    """`repxctl cancel` stops a running job's unit; the run ends cancelled and the job leaves no
    result behind (it runs again when asked for again)."""
    run_id = submit(machine, lab, run)
    unit = _running_unit(machine)
    machine.succeed(f"repxctl cancel {run_id}")
    machine.wait_until_fails(f"test -n \"$(systemctl list-units --no-legend --all '{unit}')\"", timeout=60)
    wait_for_run(machine, run_id, timeout=60, state="cancelled")
    (job,) = run_jobs(machine, run_id)
    assert job["state"] == "cancelled", job
    machine.fail(f"test -e {BASE}/outputs/{job['job_id']}/repx/SUCCESS")
    machine.fail(f"test -e {BASE}/outputs/{job['job_id']}/repx/FAIL")


def watchdog_restarts_frozen_scheduler(machine: BaseMachine) -> None:
    """A scheduler frozen with SIGSTOP stops pinging the watchdog; systemd kills and restarts it."""
    unit = "repx-scheduler.service"
    before = int(machine.succeed(f"systemctl show -p NRestarts --value {unit}"))
    pid = machine.succeed(f"systemctl show -p MainPID --value {unit}").strip()
    machine.succeed(f"kill -STOP {pid}")
    machine.wait_until_succeeds(f"test $(systemctl show -p NRestarts --value {unit}) -gt {before}", timeout=120)
    machine.wait_for_unit(unit)
    assert machine.succeed(f"systemctl show -p MainPID --value {unit}").strip() != pid
    log = machine.succeed(f"journalctl --no-pager -u {unit} -n 200")
    assert "Watchdog timeout" in log or "watchdog" in log.lower(), log


def reboot_mid_run_completes(machine: QemuMachine, lab: str, run: str) -> None:
    """The machine reboots while a job runs: repx comes back with the machine and the run completes."""
    run_id = submit(machine, lab, run)
    _running_unit(machine)
    machine.reboot()
    for unit in ROLE_UNITS:
        machine.wait_for_unit(unit)
    details = wait_for_run(machine, run_id, timeout=300)
    assert details["state"] == "succeeded"


def slurm_target_runs(machine: BaseMachine, user: str, lab: str, selection: str, target: str, base: str,
                      as_user: str | None = None) -> str:
    """A researcher's run on a SLURM target: it succeeds, and every job went through SLURM as a
    batch job of that researcher (sacct lists them under their name, COMPLETED). `as_user` is the
    command prefix that runs a program as `user` (default runuser)."""
    prefix = as_user or f"runuser -u {user} --"
    run_id = machine.succeed(f"{prefix} repxctl run {shlex.quote(selection)} --lab {shlex.quote(lab)} "
                             f"--target {shlex.quote(target)} --detach").strip().splitlines()[-1]
    wait_for_run(machine, run_id)
    jobs = run_jobs(machine, run_id)
    for job in jobs:
        machine.succeed(f"test -e {base}/outputs/{job['job_id']}/repx/SUCCESS")
    # Accounting records a job a few seconds after it ends.
    machine.wait_until_succeeds(
        f"test $(sacct --noheader --parsable2 --allocations --starttime=now-1hour --user={user} --format=JobName,State"
        f" | grep -c '^repx\\.{run_id}\\..*|COMPLETED$') -ge {len(jobs)}", timeout=60)
    return run_id


def ssh_target_runs(machine: BaseMachine, remote: BaseMachine, user: str, lab: str, selection: str, target: str, remote_base: str,
                    as_user: str | None = None) -> str:
    """A researcher's run on an SSH target: it succeeds, and every job ran on the remote host,
    whose base path holds each job's outputs, logs and SUCCESS marker in the upstream layout.
    `remote` is the remote host; `as_user` as in slurm_target_runs."""
    prefix = as_user or f"runuser -u {user} --"
    run_id = machine.succeed(f"{prefix} repxctl run {shlex.quote(selection)} --lab {shlex.quote(lab)} "
                             f"--target {shlex.quote(target)} --detach").strip().splitlines()[-1]
    wait_for_run(machine, run_id)
    jobs = run_jobs(machine, run_id)
    assert jobs, f"run {run_id} has no jobs"
    for job in jobs:
        assert job["state"] == "succeeded", job
        where = f"{remote_base}/outputs/{job['job_id']}"
        remote.succeed(f"test -e {where}/repx/SUCCESS && test -e {where}/repx/stdout.log "
                       f"&& test -n \"$(ls -A {where}/out)\"")
    return run_id
