"""The batch script for processes a cluster scheduler starts (SLURM, Grid Engine).

One script serves a single job or an array: each array index has its own arm (working directory,
environment, command line, log files, exit-status file), so one submission covers a whole
stage. The arm writes the exit status beside the launcher's guard, as the local wrapper does, so
a restarted repx reads the outcome even after the scheduler has forgotten the job."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..exec.launcher import exit_file
from ..exec.runtimes import Invocation


@dataclass(frozen=True)
class Process:
    """One process to run under the job contract: what the local launcher would fork, and the
    stem of its guard's files (`OutputLayout.guard`), beside which its exit status is written."""

    invocation: Invocation
    stdout: Path
    stderr: Path
    guard: Path

    @property
    def exit_file(self) -> Path:
        return exit_file(self.guard)


_COMMON = """\
#!/bin/sh
# Written by repx: runs one process of a repx job per array index.
arm() {
  cd "$1" || { echo "repx: cannot enter $1" >&2; exit 200; }
  exit_file=$2; shift 2
  "$@"
  status=$?
  echo "$status" > "$exit_file"
  exit "$status"
}
case "${%(index)s:-0}" in
"""


def arm(index: int, process: Process) -> str:
    inv = process.invocation
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in inv.env.items())
    argv = " ".join(shlex.quote(a) for a in inv.argv)
    return (f"{index}) arm {shlex.quote(str(inv.cwd))} {shlex.quote(str(process.exit_file))}"
            f" env -i {env} {argv} >>{shlex.quote(str(process.stdout))} 2>>{shlex.quote(str(process.stderr))} ;;\n")


def batch_script(arms: list[str], index: str = "SLURM_ARRAY_TASK_ID") -> str:
    """The script for `arms`, choosing one by the array index in the environment variable `index`."""
    return (_COMMON % {"index": index} + "".join(arms)
            + f'*) echo "repx: no process for array index ${{{index}}}" >&2; exit 201 ;;\nesac\n')
