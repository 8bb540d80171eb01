"""repx dies while a job is being started on the SSH target: whatever the moment, the job runs once.

The remote start is made slow for real: the Lab's host tools (on the job's PATH, which the
remote helper takes before it starts the process) hold a `basename` that sleeps when the helper
calls it, so the test can kill repx while the remote start is under way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import repxctl

from repxd.lab.writer import LabWriter

from . import test_ssh_target
from .test_ssh_target import SLOW, run_state, target_daemon, wait_for

remote = test_ssh_target.remote  # the fixture: the SSH test host as target `remote`

SLOW_START_SECONDS = 5
# Sleeps only when the helper asks for its own name (under <base>/bin/): the jobs' calls stay fast.
SLOW_BASENAME = f"""#!/bin/sh
case "$1" in
    *remote.sh) echo "$$" >> "${{1%/bin/*}}/slow-starts.log"; sleep {SLOW_START_SECONDS} ;;
esac
exec /usr/bin/basename "$@"
"""


def slow_start_lab(dest: Path) -> Path:
    """One job of 2 s whose remote start takes SLOW_START_SECONDS."""
    writer = LabWriter(git_hash="5105a125" * 5)
    writer.run("slow").job("once", SLOW, params={"seconds": 2}, outputs={"done": "$out/done.txt"})
    lab = writer.write(dest)
    tools = lab / "host-tools" / "slow-start" / "bin"
    tools.mkdir(parents=True)
    (tools / "basename").write_text(SLOW_BASENAME)
    (tools / "basename").chmod(0o755)
    return lab


def slow_starts(remote) -> int:
    return len(remote.host.ssh(f"cat {remote.base}/slow-starts.log", check=False).stdout.split())


def test_repx_killed_during_a_remote_start_runs_the_job_once(remote, tmp_path):
    lab = slow_start_lab(tmp_path / "lab")
    proc = remote.popen("slow", "--lab", lab)
    wait_for(lambda: slow_starts(remote) == 1, 60, "the remote start to begin")
    proc.send_signal(signal.SIGKILL)  # its start goes on remotely and spawns the job's process
    proc.wait()
    (record,) = (remote.mirror / "cache" / "guards").glob("*.ssh")
    assert record.read_text().startswith("starting ")  # repx died before it knew of a process
    result = remote.run("slow", "--lab", lab, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["executed"] == 1
    time.sleep(SLOW_START_SECONDS + 1)  # the first start has long finished on the remote
    assert len(remote.executions()) == 1
    assert slow_starts(remote) == 2  # the re-run did start it (the first start was withdrawn)


def test_a_daemon_killed_during_a_remote_start_runs_the_job_once(remote, tmp_path):
    daemon = target_daemon(remote, tmp_path)
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        lab = slow_start_lab(tmp_path / "lab")
        run_id = repxctl("run", "slow", "--lab", lab, "--target", "remote", "--detach", env=env).stdout.strip()
        wait_for(lambda: slow_starts(remote) == 1, 60, "the remote start to begin")
        daemon.kill("all")
        daemon.start("all")
        wait_for(lambda: run_state(env, run_id) not in ("active", "cancelling"), 120, "the run to end")
        assert run_state(env, run_id) == "succeeded", daemon.logs()
        time.sleep(SLOW_START_SECONDS + 1)
        assert len(remote.executions()) == 1, daemon.logs()
    finally:
        daemon.stop()


# Runs a Lab embedded, like `repxctl run`, but stops for good once the remote answered a start:
# the process runs there, and its handle is not recorded here yet. Only this pause is not repx's
# own code; the kill that follows is real.
PAUSED_AFTER_START = """
import asyncio, sys
from pathlib import Path
from repxd.user_config import load_config
from repxd.engine.embedded import EmbeddedRun, ExecutionOptions, base_path_for, open_lab, plan_run, resolve_target

config, lab_path, flag = sys.argv[1:]
name, target = resolve_target(load_config(Path(config)), "remote")
base = base_path_for(target, None, name)
run = EmbeddedRun(plan_run(open_lab(Path(lab_path), base), base, ["slow"], name, target), ExecutionOptions())
run.prepare()
opened = run.remote.open

class PausedAfterStart:
    def __init__(self, inner):
        self.inner = inner

    async def run(self, argv, **options):
        result = await self.inner.run(argv, **options)
        if argv[2:3] == ["start"]:
            Path(flag).write_text(result.stdout)
            await asyncio.sleep(3600)
        return result

async def paused_open():
    launcher = await opened()
    launcher.commands = PausedAfterStart(launcher.commands)
    return launcher

run.remote.open = paused_open
asyncio.run(run.run())
"""


def test_repx_killed_after_the_remote_process_began_follows_it(remote, tmp_path):
    writer = LabWriter(git_hash="af7e5a27" * 5)
    writer.run("slow").job("once", SLOW, params={"seconds": 3}, outputs={"done": "$out/done.txt"})
    lab = writer.write(tmp_path / "lab")
    flag = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_AFTER_START, str(remote.config), str(lab), str(flag)],
                            env=remote.env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, 60, "the remote start")
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    (record,) = (remote.mirror / "cache" / "guards").glob("*.ssh")
    assert record.read_text().startswith("starting ")
    wait_for(lambda: len(remote.executions()) == 1, 10, "the job to run there")
    result = remote.run("slow", "--lab", lab, "--json")
    assert result.code == 0, result.stderr
    assert len(remote.executions()) == 1
    assert result.json()["ok"] and [marker for _, marker in remote.markers()] == ["SUCCESS"]


@pytest.mark.parametrize("revoked_first", [True, False])
def test_a_start_arriving_after_its_token_was_resolved_never_runs(remote, tmp_path, revoked_first):
    """The remote helper's protocol alone: `resolve` and a late `start` of the same token, in both
    orders; the job's process runs only if the start claimed the guard before the answer."""
    writer = LabWriter(git_hash="b0075a27" * 5)
    writer.run("slow").job("once", SLOW, params={"seconds": 0}, outputs={"done": "$out/done.txt"})
    bootstrap = remote.run("slow", "--lab", writer.write(tmp_path / "lab"))  # deploys the helper
    assert bootstrap.code == 0, bootstrap.stderr
    helper = remote.host.ssh(f"ls {remote.base}/bin/*-remote.sh").stdout.strip()
    guard, out = f"{remote.base}/cache/guards/probe", f"{remote.base}/probe/out"
    resolve = f"sh {helper} resolve T1 {guard}"
    start = f"echo . | sh {helper} start T1 {guard} {out} {remote.base}/probe/repx 0 '' sh -c 'echo ran >> {out}/../ran'"
    first, second = (resolve, start) if revoked_first else (start, resolve)
    one = remote.host.ssh(first, check=False)
    two = remote.host.ssh(second, check=False)
    time.sleep(1)
    ran = remote.host.ssh(f"cat {remote.base}/probe/ran", check=False).stdout.split()
    if revoked_first:
        assert (one.stdout, two.returncode, ran) == ("", 4, [])
        assert "withdrawn" in two.stderr
    else:
        assert ran == ["ran"] and two.stdout == one.stdout and len(one.stdout.split()) == 2
