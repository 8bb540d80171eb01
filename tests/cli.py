"""Running the real repxctl executable, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def repxctl(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> Result:
    exe = shutil.which("repxctl")
    assert exe, "repxctl is not on PATH; install the package (pip install -e .)"
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env or dict(os.environ),
                          cwd=cwd, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)
