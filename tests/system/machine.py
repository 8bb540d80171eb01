"""A Debian container booted with systemd-nspawn (real systemd as PID 1, journald, D-Bus), driven
through the NixOS test driver's machine interface so the same scenario code runs in both."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_SECONDS = 120


class MachineError(AssertionError):
    pass


class NspawnMachine:
    def __init__(self, rootfs: Path, name: str, log: Path) -> None:
        self.rootfs = rootfs
        self.name = name
        self.log = log
        self.process: subprocess.Popen | None = None
        self.leader: int | None = None
        self.allow_reboot = False

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, allow_reboot: bool = False) -> None:
        """As the NixOS test driver's start(): without `allow_reboot` a reboot ends the machine
        (QEMU runs with -no-reboot), so scenarios that reboot must ask for it."""
        self.allow_reboot = allow_reboot
        with open(self.log, "ab") as log:
            # --private-network: the container has its own loopback only. --register=no and
            # --keep-unit: this host runs no systemd-machined (no systemd as its PID 1).
            self.process = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.rootfs), "--boot", f"--machine={self.name}", "--console=passive",
                 "--register=no", "--keep-unit", "--private-network"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.leader = self._wait_for_leader()
        self.wait_until_succeeds("test -S /run/dbus/system_bus_socket && systemctl is-system-running --wait | grep -Eq 'running|degraded'",
                                 timeout=BOOT_SECONDS)

    def _wait_for_leader(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MachineError(f"systemd-nspawn exited with {self.process.returncode}; see {self.log}")
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.1)
        raise MachineError(f"the container did not start; see {self.log}")

    def reboot(self) -> None:
        """`systemctl reboot` inside; nspawn exits with 133 and is started again, as the
        systemd-nspawn@.service unit of a real host would."""
        if not self.allow_reboot:
            raise MachineError("reboot() on a machine started without allow_reboot=True: the NixOS test driver's"
                               " QEMU (-no-reboot) would exit and the next command fail with 'Shell disconnected'")
        self.execute("systemctl reboot")
        try:
            code = self.process.wait(timeout=BOOT_SECONDS)
        except subprocess.TimeoutExpired:
            raise MachineError("the container did not shut down for its reboot") from None
        if code != 133:
            raise MachineError(f"systemd-nspawn exited with {code} on reboot (expected 133)")
        self.start(allow_reboot=True)

    def shutdown(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.execute("systemctl poweroff")
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # ---- the NixOS test driver's interface --------------------------------------------------

    def execute(self, command: str, check_return: bool = True, timeout: float | None = 900) -> tuple[int, str]:
        argv = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                "--root", "--wd", "--", "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
                "/bin/sh", "-c", command]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MachineError(f"command timed out after {timeout}s: {command}") from None
        return done.returncode, done.stdout + done.stderr

    def succeed(self, *commands: str, timeout: float | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status != 0:
                raise MachineError(f"command failed ({status}): {command}\n{out}")
            output += out
        return output

    def fail(self, *commands: str, timeout: float | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status == 0:
                raise MachineError(f"command unexpectedly succeeded: {command}\n{out}")
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status, out = self.execute(command, timeout=max(1.0, deadline - time.monotonic()))
            if status == 0:
                return out
            if time.monotonic() > deadline:
                raise MachineError(f"timed out after {timeout}s waiting for: {command}\n{out}")
            time.sleep(0.5)

    def wait_until_fails(self, command: str, timeout: float = 900) -> str:
        return self.wait_until_succeeds(f"! ( {command} )", timeout)

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: float = 900) -> None:
        self.wait_until_succeeds(f"systemctl is-active --quiet {shlex.quote(unit)} || "
                                 f"{{ systemctl is-failed --quiet {shlex.quote(unit)} && exit 0; exit 1; }}",
                                 timeout)
        state = self.succeed(f"systemctl show -p ActiveState --value {shlex.quote(unit)}").strip()
        if state != "active":
            raise MachineError(f"unit {unit} is {state}:\n" + self.execute(f"journalctl -u {shlex.quote(unit)} --no-pager -n 50")[1])

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: float = 900) -> None:
        self.wait_until_succeeds(f"python3 -c 'import socket; socket.create_connection((\"{addr}\", {port}), 1)'", timeout)

    def wait_for_file(self, filename: str, timeout: float = 900) -> None:
        self.wait_until_succeeds(f"test -e {shlex.quote(filename)}", timeout)
