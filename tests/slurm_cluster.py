"""A real SLURM cluster on this one machine, in a temporary directory, for tests that drive
SLURM: two virtual nodes (NodeName=n1, n2 on this host, one slurmd each) by default.

munged, MariaDB, slurmdbd, slurmctld and the slurmd run as root inside their
own PID namespace (`unshare --pid --fork --mount-proc`): slurmstepd and job processes detach
from the daemons that start them, and the namespace is the one boundary that contains them
all, so `stop()` leaves no process behind whatever the jobs did. The daemons and clients talk
over loopback TCP on ports picked free at start; nothing outside `workdir` is written.

The settings that make this work on the project's machines (no cgroup plugins, munged
--force, slurmdbd on TCP, AccountingStoragePass=<munge socket>) are described in
/work/shared/docs/machine-notes.md; they belong to this test setup, never to the product.

Importable without pytest: `start_cluster(workdir)` raises SlurmClusterError, with the
daemons' logs, when bring-up fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurm_cluster_config import CLUSTER_NAME, PARTITION, ClusterPaths, write_configs

ACCOUNT = "repx"
USABLE_NODE_STATES = {"idle", "mixed", "allocated"}
PROGRAMS = (
    "munged", "munge", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld",
    "slurmd", "sbatch", "sacct", "sacctmgr", "scontrol", "sinfo", "squeue", "scancel",
    "unshare", "nsenter",
)

# PID 1 of the namespace: reaps every orphan (slurmstepd double-forks) so none stays
# <defunct>; the namespace ends, killing everything in it, when this process is killed.
REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


class SlurmClusterError(RuntimeError):
    """Bring-up or a cluster command failed; the message carries the relevant logs."""


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the namespace's unshare gets SIGKILL if the test process dies first."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may contain spaces; fields after ")" are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _wait_for(what: str, probe, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise SlurmClusterError(f"{what} not ready after {timeout:.0f} s\n" + _tails(logs))


def _tails(logs: list[Path], lines: int = 25) -> str:
    parts = []
    for log in logs:
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
        parts.append(f"--- {log} (last {lines} lines) ---\n" + "\n".join(text))
    return "\n".join(parts)


@dataclass
class _Daemon:
    name: str
    launcher: subprocess.Popen  # nsenter, parent of the daemon's process
    log: Path

    def host_pid(self) -> int | None:
        children = _children(self.launcher.pid)
        return children[0] if children else None


@dataclass
class SlurmCluster:
    workdir: Path
    conf: Path
    env: dict[str, str]
    nodes: list[str]
    partition: str = PARTITION
    account: str = ACCOUNT
    accounting: bool = True
    bring_up_seconds: float = 0.0
    _namespace: subprocess.Popen | None = None
    _daemons: dict[str, _Daemon] = field(default_factory=dict)

    # --- commands -------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, sacct, …) against this cluster; text output."""
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def add_user(self, name: str) -> None:
        """Let a Unix user submit: accounting enforces associations, as real sites do, so a
        user the database does not know is refused ("Invalid account …")."""
        done = self.run("sacctmgr", "--immediate", "add", "user", name, f"Account={self.account}",
                        f"Cluster={CLUSTER_NAME}", check=False)
        if done.returncode != 0 and "Nothing new added" not in done.stdout:  # already known: fine
            raise SlurmClusterError(f"sacctmgr add user {name} exited {done.returncode}: {done.stderr.strip()}")

    def job_state(self, job_id: str) -> str:
        """The job's state as sacct reports it ("" while slurmdbd has no record yet)."""
        out = self.run("sacct", "--noheader", "--parsable2", "-X", "--format=State", "-j", job_id).stdout.split("\n")
        return out[0].strip() if out else ""

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60) -> str:
        """Wait until sacct shows the job in one of `states` (a prefix such as "CANCELLED"
        matches "CANCELLED by 0"); return the state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state.split(" ")[0] in states:
                return state
            time.sleep(0.3)
        raise SlurmClusterError(f"job {job_id} is {state or 'unknown'}, not {sorted(states)}, after {timeout:.0f} s")

    def logs(self) -> str:
        return _tails([daemon.log for daemon in self._daemons.values()])

    # --- daemons --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Daemon:
        assert self._namespace is not None
        init = _children(self._namespace.pid)
        if not init:
            raise SlurmClusterError("the cluster's PID namespace is gone")
        log = self.workdir / "log" / f"{name}.out"
        with log.open("ab") as out:
            launcher = subprocess.Popen(
                ["nsenter", "--target", str(init[0]), "--pid", "--mount", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
            )
        daemon = _Daemon(name, launcher, log)
        self._daemons[name] = daemon
        return daemon

    def _alive(self, name: str) -> bool:
        return self._daemons[name].launcher.poll() is None

    def _stop_daemon(self, name: str, timeout: float = 20) -> None:
        daemon = self._daemons.pop(name)
        pid = daemon.host_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        try:
            daemon.launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            daemon.launcher.wait(5)

    def _start_controller(self) -> None:
        ctld = self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        _wait_for(
            "slurmctld",
            lambda: self._check_alive("slurmctld") and self.run("scontrol", "ping", check=False).returncode == 0,
            30, [ctld.log, self.workdir / "log" / "slurmctld.log"],
        )

    def _check_alive(self, name: str) -> bool:
        if not self._alive(name):
            raise SlurmClusterError(f"{name} exited during bring-up\n" + self.logs()
                                    + "\n" + _tails(sorted((self.workdir / "log").glob("*.log"))))
        return True

    def restart_controller(self) -> None:
        """Stop slurmctld with SIGTERM (it saves its state), then start it again; running
        jobs keep running on the nodes and are known again from StateSaveLocation."""
        self._stop_daemon("slurmctld")
        self._start_controller()

    # --- nodes ----------------------------------------------------------------------------

    def set_node_state(self, node: str, state: str, reason: str = "test") -> None:
        argv = ["scontrol", "update", f"NodeName={node}", f"State={state}"]
        if state.upper() in ("DOWN", "DRAIN", "FAIL"):
            argv.append(f"Reason={reason}")
        self.run(*argv)

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_nodes_idle(self, timeout: float = 30) -> None:
        """Wait until every node is up and taking jobs: idle, or busy with jobs already
        running (mixed, allocated), not down, drained or unresponsive ("idle*")."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if set(states) == set(self.nodes) and all(s in USABLE_NODE_STATES for s in states.values()):
                return
            time.sleep(0.3)
        raise SlurmClusterError(f"nodes not idle after {timeout:.0f} s: {states}\n" + self.logs())

    # --- teardown -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the daemons (slurmctld first, so it saves state), then end the namespace,
        which kills every process left in it: job steps, their children, stray daemons."""
        if "slurmctld" in self._daemons:
            # Whatever slurmctld does, the namespace's end below stops it.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._stop_daemon("slurmctld", timeout=10)
        if self._namespace is not None:
            init = _children(self._namespace.pid)
            for pid in init:
                os.kill(pid, signal.SIGKILL)
            self._namespace.kill()
            self._namespace.wait(10)
            self._namespace = None
        for daemon in self._daemons.values():
            try:
                daemon.launcher.wait(10)
            except subprocess.TimeoutExpired:
                daemon.launcher.kill()
        self._daemons.clear()


def start_cluster(workdir: Path, nodes: int = 2, max_array_size: int = 1001, accounting: bool = True) -> SlurmCluster:
    """Start munge, MariaDB, slurmdbd, slurmctld and `nodes` slurmd in `workdir`; return when
    every node is idle and accounting knows the cluster, account and user. Without
    `accounting` there is no MariaDB or slurmdbd, and sacct fails as on such clusters."""
    lacking = missing_programs()
    if lacking:
        raise SlurmClusterError(f"missing programs: {', '.join(lacking)}")
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    node_names = [f"n{i + 1}" for i in range(nodes)]
    paths = write_configs(workdir, node_names, max_array_size, ports={
        "mariadb": _free_port(), "dbd": _free_port(), "ctld": _free_port(),
        **{node: _free_port() for node in node_names},
    }, accounting=accounting)
    env = dict(os.environ)
    env["SLURM_CONF"] = str(paths.slurm_conf)
    for inherited in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SACCT_"))]:
        if inherited != "SLURM_CONF":
            del env[inherited]
    namespace = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "slave", "--kill-child",
         sys.executable, "-c", REAPER],
        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    cluster = SlurmCluster(workdir=workdir, conf=paths.slurm_conf, env=env, nodes=node_names,
                           accounting=accounting, _namespace=namespace)
    try:
        _wait_for("PID namespace", lambda: bool(_children(namespace.pid)), 10, [])
        _bring_up(cluster, paths, node_names)
    except BaseException:
        cluster.stop()
        raise
    cluster.bring_up_seconds = time.monotonic() - started
    return cluster


def _bring_up(cluster: SlurmCluster, paths: ClusterPaths, node_names: list[str]) -> None:
    munged = cluster._spawn("munged", [
        "munged", "--foreground", "--force", f"--key-file={paths.munge_key}", f"--socket={paths.munge_socket}",
        f"--pid-file={paths.run}/munged.pid", f"--seed-file={paths.run}/munged.seed",
        f"--log-file={paths.log}/munged.log",
    ])
    _wait_for("munged", lambda: cluster._check_alive("munged") and paths.munge_socket.exists(), 15,
              [munged.log, paths.log / "munged.log"])
    if cluster.accounting:
        _start_accounting(cluster, paths)
    cluster._start_controller()
    for node in node_names:
        cluster._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(paths.slurm_conf)])
    deadline = time.monotonic() + 30
    while True:
        for node in node_names:
            cluster._check_alive(f"slurmd-{node}")
        try:
            cluster.wait_nodes_idle(timeout=1)
            break
        except SlurmClusterError:
            if time.monotonic() > deadline:
                raise
    if cluster.accounting:
        _wait_for("sacctmgr association", lambda: CLUSTER_NAME in cluster.run(
            "sacctmgr", "--noheader", "--parsable2", "show", "association", "format=Cluster,Account,User",
            check=False).stdout, 15, [paths.log / "slurmctld.log"])


def _start_accounting(cluster: SlurmCluster, paths: ClusterPaths) -> None:
    """MariaDB and slurmdbd, with the cluster, its account and root's association."""
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={paths.mariadb_data}",
         "--auth-root-authentication-method=socket", "--skip-test-db", "--innodb-log-file-size=8M"],
        capture_output=True, text=True,
    )
    if install.returncode != 0:
        raise SlurmClusterError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    mariadb = cluster._spawn("mariadbd", [
        "mariadbd", "--no-defaults", "--user=root", f"--datadir={paths.mariadb_data}",
        f"--socket={paths.mariadb_socket}", f"--port={paths.ports['mariadb']}", "--bind-address=127.0.0.1",
        f"--pid-file={paths.run}/mariadbd.pid", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
        "--innodb-lock-wait-timeout=900", "--innodb-log-file-size=8M",
    ])
    sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{paths.db_password}';"
           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
    _wait_for("mariadbd", lambda: cluster._check_alive("mariadbd") and subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={paths.mariadb_socket}", "-u", "root", "-e", sql],
        capture_output=True).returncode == 0, 60, [mariadb.log])

    dbd = cluster._spawn("slurmdbd", ["slurmdbd", "-D"])
    # slurmdbd reads SLURM_CONF's directory for slurmdbd.conf.
    _wait_for("slurmdbd", lambda: cluster._check_alive("slurmdbd") and cluster.run(
        "sacctmgr", "--noheader", "list", "cluster", check=False).returncode == 0,
        60, [dbd.log, paths.log / "slurmdbd.log"])
    cluster.run("sacctmgr", "--immediate", "add", "cluster", CLUSTER_NAME)
    cluster.run("sacctmgr", "--immediate", "add", "account", ACCOUNT, f"Cluster={CLUSTER_NAME}")
    cluster.run("sacctmgr", "--immediate", "add", "user", "root", f"Account={ACCOUNT}",
                f"DefaultAccount={ACCOUNT}", f"Cluster={CLUSTER_NAME}")
