"""The session's real second host (tests/ssh_host.py): sshd in its own namespaces: started once, stopped at the end.

This directory is a package so that this conftest is `ssh.conftest`, not a second `conftest`
module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import pytest
from conftest import require_system, started_in_workdir
from ssh_host import SshHost, missing_programs, start_ssh_host


@pytest.fixture(scope="session")
def ssh_host() -> SshHost:
    require_system(missing_programs(), "apt install openssh-server openssh-client iproute2",
                   root_because="the SSH test host needs root (network namespace, veth, a test user)")
    # Not under /tmp: the remote's mount namespace hides /tmp, but sshd reads its files here.
    with started_in_workdir(start_ssh_host, "repx-ssh-", under="/var/tmp") as host:
        yield host
