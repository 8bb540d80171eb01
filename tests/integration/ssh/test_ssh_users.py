"""The operator scenario shared with the VM test nixos-tests/ssh.nix: a root daemon whose `remote`
target is the SSH test host, and a researcher (a real Unix user, see test_security_isolation)
submitting a sweep to it over the daemon's socket."""

from __future__ import annotations

import os

from definitions import build
from system import scenarios
from test_auth import REPXCTL
from test_security_isolation import ALICE, shared_dir, users  # noqa: F401 - fixtures
from this_host import RemoteShell, ThisHost

from ssh.test_ssh_target import remote, target_daemon  # noqa: F401 - fixture


def test_the_shared_ssh_scenario_runs_a_researchers_sweep_on_the_remote(remote, users, shared_dir, tmp_path):  # noqa: F811
    alice = users[ALICE]
    daemon = target_daemon(remote, tmp_path, jobs_as_daemon=False)
    # Alice's own Lab, in a directory she can read: the daemon reads it as her.
    lab = build("sweep-scatter", shared_dir / "sweep")
    daemon.start("all")
    try:
        here = ThisHost({**remote.env, "REPX_API": str(daemon.socket), "HOME": "/nonexistent",
                         "PATH": f"{REPXCTL.parent}:{os.environ['PATH']}"})
        scenarios.ssh_target_runs(here, RemoteShell(remote.host.ssh), ALICE, str(lab), "sweep", "remote", remote.base,
                                  as_user=" ".join(alice.prefix))
    finally:
        daemon.stop()
