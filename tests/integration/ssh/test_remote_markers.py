"""The remote base ends in upstream's layout (every SUCCESS/FAIL marker, every completion line)
even when the daemon stops between a job's end and the poll cycle that carries its marker."""

from __future__ import annotations

import json
import signal

import pytest
from cli import repxctl
from service import Daemon

from . import test_ssh_target
from .test_ssh_target import run_state, slow_lab, target_config, wait_for

remote = test_ssh_target.remote  # the fixture: the SSH test host as target `remote`

POLL_SECONDS = 4  # long enough to stop the daemon while markers wait for the next cycle


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_markers_reach_the_remote_when_the_daemon_stops_mid_run(remote, tmp_path, stop):
    config = target_config(tmp_path / "target.toml", remote.host, remote.base, poll=POLL_SECONDS)
    daemon = Daemon.create(extra=config.read_text())
    daemon.env = remote.env
    mirror = daemon.root / "state" / "targets" / "remote" / "outputs"
    daemon.start("all")
    try:
        env = {**remote.env, "REPX_API": str(daemon.socket)}
        lab = slow_lab(tmp_path / "lab", seconds=1)
        run_id = repxctl("run", "slow", "--lab", lab, "--target", "remote", "--detach", env=env).stdout.strip()
        wait_for(lambda: len(list(mirror.glob("*/repx/SUCCESS"))) == 2, 60, "the first jobs' markers in the mirror")
        first = {(path.parts[-3], "SUCCESS") for path in mirror.glob("*/repx/SUCCESS")}
        assert remote.markers() == set(), daemon.logs()  # they wait for the next poll cycle
        daemon.kill("all", stop)
        if stop == signal.SIGTERM:  # sent before the daemon exited
            assert remote.markers() == first, daemon.logs()
            assert len(remote.completions()) == 2
        else:  # lost with the daemon, until it starts again
            assert remote.markers() == set()
        daemon.start("all")
        wait_for(lambda: run_state(env, run_id) not in ("active", "cancelling"), 120, "the run to end")
        assert run_state(env, run_id) == "succeeded", daemon.logs()
        mirrored = (mirror / "completions.jsonl").read_text().splitlines()
        succeeded = {(json.loads(line)["id"], "SUCCESS") for line in mirrored}
        assert len(mirrored) == len(succeeded) == 3
        wait_for(lambda: remote.markers() == succeeded and remote.completions() == mirrored, 3 * POLL_SECONDS,
                 "every marker and completion line on the remote")
    finally:
        daemon.stop()
