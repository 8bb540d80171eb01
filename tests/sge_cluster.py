"""A real Grid Engine (Debian's SGE 8.1.9: sge_qmaster + sge_execd) in a temporary SGE_ROOT with its
own spool and ports, run as root; the steps are those of tests/fixtures/sge/README.md."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from service import free_port

PROGRAMS = ["sge_qmaster", "sge_execd", "qsub", "qstat", "qacct", "qconf", "qdel"]
SHARE = Path("/usr/share/gridengine")
LIBEXEC = Path("/usr/lib/gridengine")


class SgeClusterError(RuntimeError):
    pass


def missing_programs() -> list[str]:
    found = [p for p in PROGRAMS if shutil.which(p) or Path("/usr/sbin", p).exists()]
    return [p for p in PROGRAMS if p not in found] + ([] if os.geteuid() == 0 else ["root"])


@dataclass
class SgeCluster:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(args, env=self.env, input=stdin, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SgeClusterError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _pids(self) -> list[int]:
        files = [self.root / "spool/qmaster/qmaster.pid", *self.root.glob("spool/execd/*/execd.pid")]
        return [int(f.read_text().split()[0]) for f in files if f.exists()]

    def stop(self) -> None:
        for pid in self._pids():  # by PID only: other Grid Engines on this host are not ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in self._pids()):
            time.sleep(0.2)
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_for(what: str, probe, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.3)
    raise SgeClusterError(f"Grid Engine did not become ready: {what}")


def start_cluster(root: Path, slots: int = 8) -> SgeCluster:
    host = socket.gethostname()
    for sub in ("default/common", "spool/qmaster", "spool/execd", "spooldb"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "util").symlink_to("/var/lib/gridengine/util")
    (root / "utilbin").symlink_to("/var/lib/gridengine/utilbin")
    common = root / "default/common"
    (common / "bootstrap").write_text(
        "admin_user none\ndefault_domain none\nignore_fqdn true\nspooling_method berkeleydb\n"
        f"spooling_lib libspoolb\nspooling_params {root}/spooldb\nbinary_path /usr/sbin\n"
        f"qmaster_spool_dir {root}/spool/qmaster\nsecurity_mode none\nlistener_threads 2\n"
        "worker_threads 2\nscheduler_threads 1\n")
    # The host name resolves to 127.0.0.1 here: without the alias every client is refused.
    (common / "host_aliases").write_text(f"{host} localhost\n")
    (common / "act_qmaster").write_text(f"{host}\n")
    configuration = (SHARE / "default-configuration").read_text().replace("/var/spool/gridengine/execd", f"{root}/spool/execd")
    configuration = "\n".join("min_uid 0" if line.startswith("min_uid ") else "min_gid 0" if line.startswith("min_gid ")
                              else line for line in configuration.splitlines()) + "\n"
    (root / "configuration").write_text(configuration)
    env = {**os.environ, "SGE_ROOT": str(root), "SGE_CELL": "default",
           "SGE_QMASTER_PORT": str(free_port()), "SGE_EXECD_PORT": str(free_port())}
    cluster = SgeCluster(root, env)
    cluster.run(str(LIBEXEC / "spoolinit"), "berkeleydb", "libspoolb", f"{root}/spooldb", "init")
    cluster.run(str(LIBEXEC / "spooldefaults"), "configuration", str(root / "configuration"))
    cluster.run(str(LIBEXEC / "spooldefaults"), "complexes", str(SHARE / "util/resources/centry"))
    cluster.run(str(LIBEXEC / "spooldefaults"), "usersets", str(SHARE / "util/resources/usersets"))
    cluster.run(str(LIBEXEC / "spooldefaults"), "managers", "root")
    try:
        cluster.run("/usr/sbin/sge_qmaster")
        _wait_for("qmaster answers qconf", lambda: subprocess.run(["qconf", "-sh"], env=env, capture_output=True).returncode == 0, 30)
        cluster.run("qconf", "-ah", host)
        cluster.run("qconf", "-as", host)
        # execd after min_uid 0 is in place (a running execd keeps the old limit).
        cluster.run("/usr/sbin/sge_execd")
        queue = root / "all.q.conf"
        fixture = (Path(__file__).parent / "fixtures/sge/all.q.conf").read_text()
        lines = [f"hostlist {host}" if line.startswith("hostlist") else f"slots {slots}" if line.startswith("slots")
                 else line for line in fixture.splitlines()]
        queue.write_text("\n".join(lines) + "\n")
        cluster.run("qconf", "-Aq", str(queue))
        scheduler = cluster.run("qconf", "-ssconf")
        sconf = root / "sconf"
        sconf.write_text("\n".join("schedule_interval 0:0:1" if line.startswith("schedule_interval") else line
                                   for line in scheduler.splitlines()) + "\n")
        cluster.run("qconf", "-Msconf", str(sconf))
        _wait_for("execd reports load", lambda: "-NA-" not in cluster.run("qhost").splitlines()[-1], 60)
    except Exception:
        cluster.stop()
        raise
    return cluster
