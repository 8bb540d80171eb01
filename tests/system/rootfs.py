"""The system tier's machine: a Debian bookworm root filesystem made with debootstrap (cached
under build/system, keyed by its package list), copied per test session, booted with
systemd-nspawn, and repx installed into it as an operator would on a Debian host: the wheel built
from this checkout into a venv, `repxd install-units`, sysusers, tmpfiles, `systemctl enable
--now repx.target`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import missing, require_program
from machine import NspawnMachine

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "system"
SUITE = "bookworm"
MIRROR = os.environ.get("REPX_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "polkitd", "python3", "python3-venv", "procps", "iproute2"]

REPXD_TOML = """\
[agent]
launcher = "systemd"  # fail loudly instead of falling back to subprocesses
run_as_submitter = true
# The scenarios submit as root; their jobs keep running as the service user, as before (the
# integration tier covers the default, agent.job_user = "nobody").
allow_jobs_as_daemon_user = true
heartbeat_interval = 1.0
"""
RESEARCHER = "alice"  # a user who submits runs
# Operators tune this; a short watchdog keeps the frozen-scheduler scenario quick.
WATCHDOG_DROPIN = "[Service]\nWatchdogSec=10s\n"


def base_rootfs() -> Path:
    """The debootstrapped tree, built once and reused while its package list is unchanged."""
    key = hashlib.sha256(" ".join([SUITE, *PACKAGES]).encode()).hexdigest()[:12]
    target = BUILD / f"{SUITE}-{key}"
    if (target / ".complete").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log = BUILD / "debootstrap.log"
    with open(log, "wb") as out:
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                               str(partial), MIRROR], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        pytest.fail(f"debootstrap failed ({done.returncode}); see {log}")
    (partial / "etc" / "machine-id").write_text("")  # a new id per boot of each copy
    (partial / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def build_wheels() -> Path:
    """This checkout's wheel and its dependencies', for an offline install in the container."""
    wheels = BUILD / "wheels"
    for old in wheels.glob("repx-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(ROOT)], check=True)
    return wheels


@contextmanager
def repx_machine(workdir: Path):
    """A booted container with repx installed and repx.target enabled."""
    require_program("systemd-nspawn")
    require_program("debootstrap")
    require_program("nsenter")
    if os.geteuid() != 0:
        missing("the system tier boots a container: run it as root")
    base = base_rootfs()
    wheels = build_wheels()
    rootfs = workdir / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)], check=True)
    shutil.copytree(wheels, rootfs / "root" / "wheels")
    for lab in ("simple", "naps", "sweep-scatter"):
        shutil.copytree(ROOT / "examples" / "labs" / lab, rootfs / "srv" / "labs" / lab)
    (rootfs / "etc" / "repx").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "repx" / "repxd.toml").write_text(REPXD_TOML)
    dropin = rootfs / "etc" / "systemd" / "system" / "repx-scheduler.service.d"
    dropin.mkdir(parents=True)
    (dropin / "watchdog.conf").write_text(WATCHDOG_DROPIN)

    vm = NspawnMachine(rootfs, "repx-system", workdir / "nspawn.log")
    vm.start(allow_reboot=True)  # a scenario reboots it, as single-node.nix allows
    try:
        vm.succeed(
            "python3 -m venv /opt/repx",
            "/opt/repx/bin/pip install -q --no-index --find-links /root/wheels repx",
            "ln -s /opt/repx/bin/repxctl /opt/repx/bin/repxd /usr/local/bin/",
            "repxd install-units",
            "systemd-sysusers && systemd-tmpfiles --create",
            "systemctl daemon-reload && systemctl restart polkit",
            "systemctl enable --now repx.target",
            f"useradd --create-home {RESEARCHER}",
            timeout=600,
        )
        yield vm
    finally:
        if vm.process and vm.process.poll() is None:
            (workdir / "journal.txt").write_text(vm.execute("journalctl --no-pager -b -n 3000")[1])
        vm.shutdown()
