"""The session's real second host (tests/ssh_host.py): sshd in its own namespaces, started once.

This directory is a package so that this conftest is `ssh.conftest`, not a second `conftest`
module shadowing tests/conftest.py, whose helpers it imports."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import missing
from ssh_host import SshHost, missing_programs, start_ssh_host


@pytest.fixture(scope="session")
def ssh_host() -> SshHost:
    lacking = missing_programs()
    if lacking:
        missing(f"{', '.join(lacking)} not installed (apt install openssh-server openssh-client iproute2; "
                ".ci/run does)")
    if os.geteuid() != 0:
        missing("the SSH test host needs root (network namespace, veth, a test user)")
    # Not under /tmp: the remote's mount namespace hides /tmp, but sshd reads its files here.
    workdir = Path(tempfile.mkdtemp(prefix="repx-ssh-", dir="/var/tmp"))
    try:
        host = start_ssh_host(workdir)
        try:
            yield host
        finally:
            host.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
