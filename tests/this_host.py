"""This host behind the NixOS test driver's machine interface, for the operator scenarios shared
with the VM tests (tests/system/scenarios.py) when they drive a real cluster or remote host here."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


class ThisHost:
    """The NixOS test driver's machine interface (succeed, wait_until_succeeds) on this host, as
    the driver runs commands (`set -euo pipefail`, a time limit), so that the operator scenarios
    shared with the VM tests (tests/system/scenarios.py) drive the real cluster here too."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def execute(self, command: str, timeout: float = 900) -> tuple[int, str]:
        done = subprocess.run(["timeout", str(int(timeout)), "bash", "-c", f"set -euo pipefail; {command}"],
                              capture_output=True, text=True, env=self.env)
        self.last_stderr = done.stderr
        return done.returncode, done.stdout

    def succeed(self, command: str, timeout: float = 900) -> str:
        status, out = self.execute(command, timeout)
        assert status == 0, f"command failed ({status}): {command}\n{out}{self.last_stderr}"
        return out

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        for _ in range(int(timeout)):
            status, out = self.execute(command)
            if status == 0:
                return out
            time.sleep(1)
        raise AssertionError(f"timed out: {command}")


class RemoteShell:
    """A host reached with `run(command) -> CompletedProcess` (the SSH test host's `ssh`), seen
    as a machine that only offers `succeed`: what a scenario checks on a remote host."""

    def __init__(self, run: Callable[..., subprocess.CompletedProcess]) -> None:
        self._run = run

    def succeed(self, command: str) -> str:
        done = self._run(f"set -eu; {command}", check=False)
        assert done.returncode == 0, f"command failed on the remote ({done.returncode}): {command}\n{done.stdout}{done.stderr}"
        return done.stdout
