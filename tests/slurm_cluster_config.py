"""Configuration files of the test SLURM cluster (see slurm_cluster.py)."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

CLUSTER_NAME = "repxtest"
PARTITION = "debug"
# Every node claims more CPUs and memory than the machine has so that parallel jobs fit;
# --mem limits are enforced by the accounting poller (OverMemoryKill), not by the kernel.
NODE_CPUS = 8
NODE_MEMORY_MB = 16000


@dataclass(frozen=True)
class ClusterPaths:
    workdir: Path
    ports: dict[str, int]
    db_password: str

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def log(self) -> Path:
        return self.workdir / "log"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def munge_key(self) -> Path:
        return self.etc / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.run / "munge.socket"

    @property
    def mariadb_data(self) -> Path:
        return self.workdir / "mariadb"

    @property
    def mariadb_socket(self) -> Path:
        return self.run / "mariadb.sock"


def _accounting(paths: ClusterPaths, accounting: bool) -> str:
    if not accounting:
        return "AccountingStorageType=accounting_storage/none"
    return f"""\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={paths.ports["dbd"]}
# slurmctld ignores AuthInfo's socket when talking to slurmdbd; this names it.
AccountingStoragePass={paths.munge_socket}
AccountingStorageEnforce=associations,limits"""


def _slurm_conf(paths: ClusterPaths, nodes: list[str], max_array_size: int, accounting: bool) -> str:
    host = socket.gethostname().split(".")[0]
    ports = paths.ports
    node_lines = "\n".join(
        f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[node]} "
        f"CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN"
        for node in nodes
    )
    return f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (default 120 s).
AuthInfo=socket={paths.munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={paths.workdir}/state
SlurmdSpoolDir={paths.workdir}/spool/%n
SlurmctldPidFile={paths.run}/slurmctld.pid
SlurmdPidFile={paths.run}/slurmd-%n.pid
SlurmctldLogFile={paths.log}/slurmctld.log
SlurmdLogFile={paths.log}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
# No cgroup plugins: this machine's cgroups are mixed v1/v2.
# Nodes claim 8 CPUs on a 2-core machine: slurm.conf, not the hardware, defines them.
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Memory is a consumable resource so that --mem reaches the job's steps as their limit;
# a job without --mem gets DefMemPerCPU (eight of them fill a node, as its CPUs do).
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={NODE_MEMORY_MB // NODE_CPUS}
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
PriorityType=priority/basic
# Memory is sampled every second and a step over its --mem is killed: the job ends FAILED
# (0:9); OUT_OF_MEMORY needs the cgroup task plugin, which cannot run here.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
{_accounting(paths, accounting)}
JobCompType=jobcomp/none
# Quick reactions for tests: finished jobs leave squeue after 2 s, a job over its time
# limit gets SIGTERM then SIGKILL 2 s later. A node set DOWN stays DOWN until RESUME.
MinJobAge=2
KillWait=2
OverTimeLimit=0
InactiveLimit=0
ReturnToService=1
MaxArraySize={max_array_size}
{node_lines}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _slurmdbd_conf(paths: ClusterPaths) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
AuthType=auth/munge
AuthInfo=socket={paths.munge_socket}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={paths.ports["dbd"]}
SlurmUser=root
DebugLevel=info
LogFile={paths.log}/slurmdbd.log
PidFile={paths.run}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={paths.ports["mariadb"]}
StorageUser=slurm
StoragePass={paths.db_password}
StorageLoc=slurm_acct_db
"""


def write_configs(workdir: Path, nodes: list[str], max_array_size: int, ports: dict[str, int],
                  accounting: bool) -> ClusterPaths:
    paths = ClusterPaths(workdir=workdir, ports=ports, db_password=secrets.token_hex(12))
    for directory in (paths.etc, paths.run, paths.log, workdir / "state", paths.mariadb_data):
        directory.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        (workdir / "spool" / node).mkdir(parents=True, exist_ok=True)
    # munged refuses a key readable by others and a socket directory writable by others.
    for directory in (paths.etc, paths.run, paths.log):
        directory.chmod(0o755)
    paths.munge_key.write_bytes(secrets.token_bytes(1024))
    paths.munge_key.chmod(0o400)
    paths.slurm_conf.write_text(_slurm_conf(paths, nodes, max_array_size, accounting))
    dbd_conf = paths.etc / "slurmdbd.conf"
    dbd_conf.write_text(_slurmdbd_conf(paths))
    # slurmdbd refuses a configuration (it holds the database password) others can read.
    os.chmod(dbd_conf, 0o600)
    return paths
