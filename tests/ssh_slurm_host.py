"""A SLURM cluster on the SSH test host (tests/ssh_host.py): munged, slurmctld and one slurmd
started inside that host's network, mount and PID namespaces, so the remote's login session
submits to it as on a real login node, over the namespace's own loopback only. No accounting
(no slurmdbd): squeue alone must do, as on clusters without it.

The remote user's shell finds the cluster through the default configuration path: the cluster's
etc/ is bind-mounted on /etc/slurm in the host's mount namespace (private to it: this machine's
/etc/slurm is untouched). We chose that over SLURM_CONF in the remote environment because a real
login node works that way, and a non-interactive ssh session would not read a profile setting
it: repx must not depend on the login shell's variables to find the scheduler."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slurm_cluster import SlurmCluster, SlurmClusterError, _bring_up, _free_port
from slurm_cluster import missing_programs as slurm_programs
from slurm_cluster_config import write_configs
from ssh_host import SshHost

# Without accounting the cluster needs no MariaDB or slurmdbd.
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "nsenter")


def missing_programs() -> list[str]:
    return [p for p in slurm_programs() if p in PROGRAMS]


@dataclass
class NamespacedSlurmCluster(SlurmCluster):
    host_pid: int = 0  # sshd, PID 1 of the SSH host's namespaces

    def _enter(self, *argv: str) -> list[str]:
        """argv inside the host's namespaces; its PID namespace too, where its /proc (and so
        /proc/self, which mount and umount read) belongs."""
        return ["nsenter", "--target", str(self.host_pid), "--net", "--mount", "--pid", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(self._enter(*argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\n"
                                    f"stderr: {result.stderr}")
        return result

    def _spawn(self, name: str, argv: list[str]):
        from slurm_cluster import _Daemon

        log = self.workdir / "log" / f"{name}.out"
        with log.open("ab") as out:
            launcher = subprocess.Popen(self._enter(*argv), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=self.env)
        daemon = _Daemon(name, launcher, log)
        self._daemons[name] = daemon
        return daemon

    def submissions(self) -> list[str]:
        """The batch jobs slurmctld accepted, from its log: one line per sbatch it answered."""
        log = self.workdir / "log" / "slurmctld.log"
        return [line for line in log.read_text(errors="replace").splitlines() if "_slurm_rpc_submit_batch_job" in line]

    @contextlib.contextmanager
    def slow_sbatch(self, seconds: float) -> Iterator[Path]:
        """sbatch on the host made to wait `seconds` before submitting, and to log each call to
        the file yielded: a wrapper bind-mounted over /usr/bin/sbatch in the host's mount
        namespace only, running a copy of the real one."""
        real = self.workdir / "sbatch.real"
        shutil.copy2("/usr/bin/sbatch", real)
        calls = self.workdir / "sbatch-calls.log"
        wrapper = self.workdir / "sbatch.slow"
        wrapper.write_text(f'#!/bin/sh\necho "sbatch $*" >> {calls}\nsleep {seconds}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        calls.touch(mode=0o666)
        calls.chmod(0o666)  # the remote user's sbatch writes it
        subprocess.run(self._enter("mount", "--bind", str(wrapper), "/usr/bin/sbatch"), check=True)
        try:
            yield calls
        finally:
            subprocess.run(self._enter("umount", "/usr/bin/sbatch"), check=True)

    @contextlib.contextmanager
    def without_sbatch(self) -> Iterator[None]:
        """No usable sbatch on the host (/dev/null over it, in its mount namespace only)."""
        subprocess.run(self._enter("mount", "--bind", "/dev/null", "/usr/bin/sbatch"), check=True)
        try:
            yield
        finally:
            subprocess.run(self._enter("umount", "/usr/bin/sbatch"), check=True)

    def stop(self) -> None:
        """The daemons only: the SSH host's end takes the rest of its namespaces (job steps too)."""
        for name in ["slurmctld", *[n for n in self._daemons if n != "slurmctld"]]:
            if name in self._daemons:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self._stop_daemon(name, timeout=10)


def start_cluster_on(host: SshHost, workdir: Path) -> NamespacedSlurmCluster:
    """The cluster's files in `workdir`, which the host must see (under its workdir, not /tmp)."""
    if host.sshd_pid is None:
        raise SlurmClusterError("the SSH host is not running")
    workdir.chmod(0o755)
    # Unused ports for the database are asked for too: the configuration writer names them.
    paths = write_configs(workdir, ["n1"], 1001, ports={name: _free_port() for name in ("ctld", "n1", "dbd", "mariadb")}, accounting=False)
    # This machine's SLURM variables must not point the daemons or clients elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SACCT_"))}
    cluster = NamespacedSlurmCluster(workdir=workdir, conf=paths.slurm_conf, env=env, nodes=["n1"], accounting=False,
                                     host_pid=host.sshd_pid)
    # `ip netns exec` gave the host a fresh /sys without /sys/fs/cgroup, where slurmd looks even
    # with no cgroup plugin configured: it wants this machine's hybrid layout, a tmpfs holding the
    # named `systemd` v1 hierarchy (the machine's own hierarchy, which slurmd only reads here).
    mounts = ("mount --bind {etc} /etc/slurm && mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup"
              " && mkdir /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd")
    mounted = subprocess.run(cluster._enter("sh", "-c", mounts.format(etc=paths.etc)), capture_output=True, text=True)
    if mounted.returncode != 0:
        raise SlurmClusterError(f"mounting the cluster's configuration on the SSH host: {mounted.stderr.strip()}")
    try:
        _bring_up(cluster, paths, ["n1"])
    except BaseException:
        cluster.stop()
        raise
    return cluster
