"""A real second host for SSH tests: OpenSSH's sshd in its own network, mount and PID namespace.

The "remote" is reached at a veth address in 10.251.0.0/16 as a test Unix user with a generated
key. sshd runs as PID 1 of a PID namespace under `unshare --kill-child`, whose parent-death signal
is SIGKILL: if the test process dies (even -9), sshd and every session die with it. Its mount
namespace hides /home, /tmp, /root, /work and this checkout (wherever CI clones it) behind fresh
tmpfs, so the remote cannot see the local files. Stale namespaces and users of dead test processes are removed at the next start."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "rxs"  # short: a link name is at most 15 characters ("rxs<pid>n<k>h")
_started = 0
ALIAS = "repx-remote"
SSHD = "/usr/sbin/sshd"
CHECKOUT = str(Path(__file__).resolve().parents[1])
HIDDEN = ["/home", "/tmp", "/root", "/work", CHECKOUT]


class SshHostError(RuntimeError):
    pass


def missing_programs() -> list[str]:
    return [p for p in ["ip", "unshare", "nsenter", SSHD, "ssh", "ssh-keygen", "useradd", "userdel"]
            if shutil.which(p) is None]


def _die_with_parent() -> None:
    """preexec_fn: the namespace's unshare gets SIGKILL if the test process dies first."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie: killed namespace processes are reaped later by the machine's init."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remove_stale() -> None:
    """Namespaces, links and users left by a test process that was killed (-9)."""
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and not Path(f"/proc/{name[len(PREFIX):].split('n')[0]}").exists():
            for addr in _run("ip", "-n", name, "-4", "-o", "addr", "show", "dev", f"{name}n",
                             check=False).stdout.split():
                if addr.startswith("10.251."):  # a route left by cut_link
                    _run("ip", "route", "del", "unreachable", addr.replace("/30", "/32"), check=False)
            _run("ip", "netns", "delete", name, check=False)
            _run("ip", "link", "delete", f"{name}h", check=False)
            _run("userdel", name, check=False)


def _free_subnet() -> tuple[str, str]:
    """A /30 in 10.251.0.0/16 that no address or route of this host uses: (host, remote)."""
    used = _run("ip", "-4", "addr").stdout + _run("ip", "-4", "route").stdout
    start = os.getpid() % 16384
    for step in range(16384):
        block = (start + step) % 16384
        base = f"10.251.{block // 64}.{(block % 64) * 4}"
        host = f"10.251.{block // 64}.{(block % 64) * 4 + 1}"
        if base + "/" not in used and host + "/" not in used and f"{host} " not in used:
            return host, f"10.251.{block // 64}.{(block % 64) * 4 + 2}"
    raise SshHostError("no free /30 in 10.251.0.0/16")


@dataclass
class SshHost:
    workdir: Path
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    ssh_config: Path
    netns: str
    veth: str
    log: Path
    _namespace: subprocess.Popen | None = None
    bring_up_seconds: float = 0.0
    _disks: int = field(default=0)

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def sshd_pid(self) -> int | None:
        """Host PID of sshd (PID 1 of the namespace): the only child of unshare."""
        if self._namespace is None or self._namespace.poll() is not None:
            return None
        children = _children(self._namespace.pid)
        return children[0] if children else None

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), ALIAS, command],
                              capture_output=True, text=True, check=check, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def cut_link(self) -> None:
        _run("ip", "link", "set", self.veth, "down")
        _run("ip", "route", "replace", "unreachable", f"{self.host}/32")

    def restore_link(self) -> None:
        _run("ip", "route", "del", "unreachable", f"{self.host}/32", check=False)
        _run("ip", "link", "set", self.veth, "up")

    def small_disk(self, size: str = "2m") -> str:
        """A tmpfs of `size` in the user's remote home, owned by the user: for disk-full tests."""
        pid = self.sshd_pid
        if pid is None:
            raise SshHostError("sshd is not running")
        self._disks += 1
        entry = pwd.getpwnam(self.user)
        path = f"{entry.pw_dir}/small-disk-{self._disks}"
        _run("nsenter", "-t", str(pid), "-m", "sh", "-c",
             f"mkdir -p {path} && mount -t tmpfs -o size={size},uid={entry.pw_uid},gid={entry.pw_gid},"
             f"mode=0755 tmpfs {path}")
        return path

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no sshd log)"

    def stop(self) -> None:
        sshd = self.sshd_pid
        if self._namespace is not None and self._namespace.poll() is None:
            # SIGKILL to unshare's own PID: --kill-child then kills sshd (PID 1), which takes the
            # whole PID namespace, sessions included, with it.
            self._namespace.kill()
            self._namespace.wait(timeout=10)
        deadline = time.monotonic() + 10
        while sshd is not None and alive(sshd) and time.monotonic() < deadline:
            time.sleep(0.05)
        _run("ip", "route", "del", "unreachable", f"{self.host}/32", check=False)
        _run("ip", "netns", "delete", self.netns, check=False)
        _run("ip", "link", "delete", self.veth, check=False)
        _run("userdel", self.user, check=False)


def start_ssh_host(workdir: Path, timeout: float = 20) -> SshHost:
    started = time.monotonic()
    lacking = missing_programs()
    if lacking:
        raise SshHostError(f"missing programs: {', '.join(lacking)}")
    global _started
    remove_stale()
    _started += 1
    name = f"{PREFIX}{os.getpid()}n{_started}"
    host_ip, remote_ip = _free_subnet()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    keys = workdir / "keys"
    keys.mkdir()
    host_key, client_key = keys / "ssh_host_ed25519_key", keys / "client_ed25519"
    for key in (host_key, client_key):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    authorized = keys / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"{remote_ip} {host_key.with_suffix('.pub').read_text()}")
    log = workdir / "sshd.log"
    sshd_config = workdir / "sshd_config"
    sshd_config.write_text(
        f"Port 22\nListenAddress {remote_ip}\nHostKey {host_key}\nPidFile {workdir}/sshd.pid\n"
        f"UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nAuthorizedKeysFile {authorized}\nStrictModes no\n"
        f"AllowUsers {name}\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n")
    ssh_config = workdir / "ssh_config"
    ssh_config.write_text(
        f"Host {ALIAS}\n  HostName {remote_ip}\n  Port 22\n  User {name}\n  IdentityFile {client_key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
        f"  BatchMode yes\n  ConnectTimeout 5\n")
    veth = f"{name}h"
    ssh_host = SshHost(workdir=workdir, host=remote_ip, port=22, user=name, client_key=client_key,
                       known_hosts=known_hosts, ssh_config=ssh_config, netns=name, veth=veth, log=log)
    try:
        _run("useradd", "-M", "-d", f"/home/{name}", "-s", "/bin/sh", name)
        _run("usermod", "-p", "*", name)  # without PAM, sshd refuses a locked ("!") account
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{name}n")
        _run("ip", "link", "set", f"{name}n", "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{remote_ip}/30", "dev", f"{name}n")
        _run("ip", "netns", "exec", name, "ip", "link", "set", f"{name}n", "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        hide = " && ".join(f"{{ [ ! -d {d} ] || mount -t tmpfs -o mode=0755 tmpfs {d}; }}" for d in HIDDEN)
        # sshd needs its privilege separation directory /run/sshd; a private /run provides it.
        script = (f"{hide} && mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && chmod 1777 /tmp && mkdir -p /home/{name} && chown {name}: /home/{name} && "
                  f"exec {SSHD} -D -e -f {sshd_config} >>{log} 2>&1")
        ssh_host._namespace = subprocess.Popen(
            ["ip", "netns", "exec", name, "unshare", "--pid", "--fork", "--mount-proc", "--mount",
             "--propagation", "private", "--kill-child", "sh", "-c", script],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            probe = ssh_host.ssh("true", check=False, timeout=10)
            if probe.returncode == 0:
                break
            if ssh_host._namespace.poll() is not None or time.monotonic() > deadline:
                raise SshHostError(f"sshd in {name} not reachable at {remote_ip}: {probe.stderr.strip()}\n"
                                   f"--- {log} ---\n{ssh_host.logs()}")
            time.sleep(0.2)
    except BaseException:
        ssh_host.stop()
        raise
    ssh_host.bring_up_seconds = time.monotonic() - started
    return ssh_host
