"""A cluster's commands behind wrappers that log each call, so that a test can count them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class CountedCommands:
    """`commands` of the cluster whose environment is `env`, wrapped under `root/bin`; for those
    in `answers`, the command's output is logged too ("submitted <output>"), e.g. the job ids a
    test then asks the accounting about; with `answer_delay`, their output reaches the caller
    that many seconds after the command itself has returned (the cluster has the job, the
    caller does not know it yet). Run with `.env` to go through the wrappers."""

    def __init__(self, root: Path, env: dict[str, str], commands: tuple[str, ...], answers: tuple[str, ...] = (),
                 answer_delay: float = 0) -> None:
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.log = root / "calls.log"
        for command in commands:
            real = subprocess.run(["sh", "-c", f"command -v {command}"], capture_output=True, text=True,
                                  env=env).stdout.strip()
            run = f'exec "{real}" "$@"'
            if command in answers:
                run = (f'out=$("{real}" "$@"); rc=$?; echo "submitted $out" >> "{self.log}"; sleep {answer_delay};'
                       f' echo "$out"; exit $rc')
            wrapper = self.bin / command
            wrapper.write_text(f'#!/bin/sh\necho "{command} $*" >> "{self.log}"\n{run}\n')
            wrapper.chmod(0o755)
        self.env = {**env, "PATH": f"{self.bin}:{env.get('PATH', os.environ['PATH'])}"}

    def calls(self, command: str) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if line.split(" ", 1)[0] == command]
