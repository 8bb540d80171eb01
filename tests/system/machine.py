"""A Debian container booted with systemd-nspawn (real systemd as PID 1, journald, D-Bus), driven
through the NixOS test driver's machine interface so the same scenario code runs in both."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
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
        self.last_stderr = ""

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
        # is-system-running exits non-zero when degraded, which pipefail would pass on to grep's pipeline
        self.wait_until_succeeds('test -S /run/dbus/system_bus_socket && '
                                 'state=$(systemctl is-system-running --wait || true) && '
                                 '[[ $state == running || $state == degraded ]]', timeout=BOOT_SECONDS)

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
    # As the driver (see tests/typecheck/driver_stub for the version): the same signatures, each
    # command run as `timeout T bash -c 'set -euo pipefail; COMMAND'`, its stdout returned (the
    # VM's stderr goes to its console, here to the log), the status timeout's (124 when the time
    # ran out), and the waits polling once a second through `retry`.

    def execute(self, command: str, check_return: bool = True, check_output: bool = True,
                timeout: int | None = 900) -> tuple[int, str]:
        limit = ["timeout", str(timeout)] if timeout is not None else []
        argv = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                "--root", "--wd", "--", "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
                *limit, "bash", "-c", f"set -euo pipefail; {command}"]
        with open(self.log, "ab") as log:
            if not check_output:  # the driver sends the command and returns without reading
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
                return -2, ""
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
            log.write(done.stderr)
        self.last_stderr = done.stderr.decode(errors="replace")
        output = done.stdout.decode(errors="replace")
        return (done.returncode if check_return else -1), output

    def succeed(self, *commands: str, timeout: int | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status != 0:
                raise MachineError(f"command `{command}` failed (exit code {status})\n{out}{self.last_stderr}")
            output += out
        return output

    def fail(self, *commands: str, timeout: int | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status == 0:
                raise MachineError(f"command `{command}` unexpectedly succeeded\n{out}")
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        output = ""

        def check_success(_last_try: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status == 0

        retry(check_success, timeout, f"{command}\n{self.last_stderr}")
        return output

    def wait_until_fails(self, command: str, timeout: int = 900) -> str:
        output = ""

        def check_failure(_last_try: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status != 0

        retry(check_failure, timeout, f"failure of {command}")
        return output

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        if user is not None:
            raise NotImplementedError("the system tier runs no user managers")
        status, out = self.execute(f"systemctl --no-pager show {shlex.quote(unit)} --property={property}")
        if status != 0 or not out.startswith(f"{property}="):
            raise MachineError(f"systemctl show --property {property} {unit}: {out}{self.last_stderr}")
        return out.strip().split("=", 1)[1]

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None:
        """Fails at once on `failed`, and on `inactive` with no job pending, as the driver does."""

        def check_active(_last_try: bool) -> bool:
            state = self.get_unit_property(unit, "ActiveState", user)
            if state == "failed":
                raise MachineError(f'unit "{unit}" reached state "failed":\n{self._unit_log(unit)}')
            if state == "inactive":
                _, jobs = self.execute("systemctl list-jobs --full 2>&1")
                if "No jobs" in jobs and self.get_unit_property(unit, "ActiveState", user) == state:
                    raise MachineError(f'unit "{unit}" is inactive and there are no pending jobs:\n{self._unit_log(unit)}')
            return state == "active"

        retry(check_active, timeout, f"unit {unit} to be active")

    def _unit_log(self, unit: str) -> str:
        return self.execute(f"journalctl -u {shlex.quote(unit)} --no-pager -n 50")[1]

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        # The driver runs `nc -z`; Debian's minbase has no netcat, so Python opens the connection.
        probe = f"python3 -c 'import socket; socket.create_connection((\"{addr}\", {port}), 1)'"
        retry(lambda _last_try: self.execute(probe)[0] == 0, timeout, f"TCP port {port} on {addr}")

    def wait_for_file(self, filename: str, timeout: int = 900) -> None:
        retry(lambda _last_try: self.execute(f"test -e {filename}")[0] == 0, timeout, f"file {filename}")


def retry(fn: Callable[[bool], bool], timeout_seconds: int = 900, what: str = "the condition") -> None:
    """The driver's retry: call `fn(False)` once a second while fewer than `timeout_seconds` have
    passed, then a last `fn(True)`; fail if that too is false."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise MachineError(f"timed out after {time.monotonic() - start:.0f}s (timeout={timeout_seconds}) waiting for {what}")
