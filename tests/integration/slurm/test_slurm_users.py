"""A root daemon's SLURM jobs belong to their submitters: sbatch runs as the researcher who
submitted, so SLURM's accounting, limits and fair share see them, and the job has their powers,
never the daemon's. Real Unix users (see test_security_isolation), a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time

from definitions import sweep_scatter
from service import Daemon
from system import scenarios
from test_auth import REPXCTL, SELF
from test_security_isolation import ALICE, shared_dir, users  # noqa: F401 - fixtures
from this_host import ThisHost

from repxd.lab.writer import LabWriter

PROBE = """#!/bin/sh
{
  echo "uid $(id -u)"
  if cat /etc/shadow >/dev/null 2>&1; then echo "shadow readable"; else echo "shadow denied"; fi
} > "$1/report"
"""


def root_daemon_on_slurm(slurm_cluster, base) -> Daemon:
    """A root daemon whose `hpc` target is the test cluster; jobs never run as the daemon's user."""
    d = Daemon.create(jobs_as_daemon=False, extra=f'[targets.hpc]\nbase_path = "{base}"\ndefault_scheduler = "slurm"\n'
                                                  '[targets.hpc.slurm]\npoll_interval = 0.5\nsubmit_window = 0.2\n')
    d.env = dict(slurm_cluster.env)
    return d


def test_a_root_daemon_submits_each_researchers_jobs_as_that_researcher(slurm_cluster, users, shared_dir):  # noqa: F811
    alice = users[ALICE]
    slurm_cluster.add_user(ALICE)
    base = shared_dir / "hpc"
    d = root_daemon_on_slurm(slurm_cluster, base)
    writer = LabWriter()
    writer.run("probe").job("probe", PROBE, outputs={"report": "$out/report"})
    lab = writer.write(shared_dir / "lab")
    for path in (shared_dir, shared_dir / "lab"):
        path.chmod(0o755)
    d.start("all")
    try:
        result = alice.repxctl("run", "probe", "--lab", lab, "--target", "hpc", "--detach", api=d.socket)
        assert result.code == 0, result.stderr + d.logs()
        state = run_and_wait_id(d, result.stdout.strip())
        assert state == "succeeded", d.logs()
        (report,) = (base / "outputs").glob("*-probe-1.0/out/report")
        lines = dict(line.split(" ", 1) for line in report.read_text().splitlines())
        assert lines == {"uid": str(alice.uid), "shadow": "denied"}
        assert report.stat().st_uid == alice.uid
        # SLURM's accounting has the job as alice's (sacct lags a few seconds behind the job's end).
        deadline = time.monotonic() + 30
        while True:
            listed = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--starttime=now-1hour",
                                     "--format=JobName,User"], capture_output=True, text=True,
                                    env=slurm_cluster.env).stdout.splitlines()
            ours = [line.split("|")[1] for line in listed if line.startswith("repx.") and "-probe-" in line]
            if ours or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ours == [ALICE], listed
    finally:
        d.stop()


def run_and_wait_id(d: Daemon, run_id: str) -> str:
    deadline = time.monotonic() + 90
    while True:
        run = json.loads(SELF.repxctl("runs", run_id, "--json", api=d.socket).stdout)
        if run["state"] not in ("active", "cancelling"):
            return run["state"]
        assert time.monotonic() < deadline, f"run {run_id} did not end: {run}\n{d.logs()}"
        time.sleep(0.3)


def test_the_shared_slurm_scenario_runs_an_example_lab_as_its_researcher(slurm_cluster, users, shared_dir):  # noqa: F811
    alice = users[ALICE]
    slurm_cluster.add_user(ALICE)
    base = shared_dir / "hpc"
    d = root_daemon_on_slurm(slurm_cluster, base)
    lab = sweep_scatter().write(shared_dir / "sweep")
    d.start("all")
    try:
        # HOME of nobody in particular: alice's commands must not look for root's config.
        host = ThisHost({**slurm_cluster.env, "REPX_API": str(d.socket), "HOME": "/nonexistent",
                         "PATH": f"{REPXCTL.parent}:{os.environ['PATH']}"})
        scenarios.slurm_target_runs(host, ALICE, str(lab), "sweep", "hpc", str(base), as_user=" ".join(alice.prefix))
    finally:
        d.stop()
