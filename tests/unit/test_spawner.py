"""Job processes started through the spawner process (repxd/exec/spawner.py): real processes,
real descriptors, the exit status and the guard's files as the launcher leaves them."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from repxd.exec.launcher import SubprocessLauncher, adoptable_status, guarded, launch_request
from repxd.exec.processes import SpawnerGone, spawner
from repxd.exec.runtimes import Invocation


def _run(tmp_path: Path, script: str, cwd: Path | None = None) -> tuple[int, str, str]:
    out, repx = tmp_path / "out", tmp_path / "repx"
    out.mkdir(exist_ok=True)
    repx.mkdir(exist_ok=True)
    invocation = Invocation(["/bin/sh", "-c", script], {"PATH": os.environ["PATH"]}, cwd or out)

    async def main() -> int:
        async with guarded(tmp_path / "guards" / "job") as guard:
            return await SubprocessLauncher().run(invocation, repx, guard, launch_request("job", "", 1))

    status = asyncio.run(main())
    return status, (repx / "stdout.log").read_text(), (repx / "stderr.log").read_text()


def test_job_gets_status_logs_exit_record_and_a_plain_signal_state(tmp_path):
    # SigIgn all zero: a job's `yes | head -1` ends by SIGPIPE and Ctrl-C reaches it, as from a shell.
    status, stdout, stderr = _run(tmp_path, "grep SigIgn /proc/self/status; echo oops >&2; "
                                            "ls /proc/$$/fd | grep -qv '^[0-4]$' && echo leaked; exit 3")
    assert status == 3
    assert stdout.split() == ["SigIgn:", "0000000000000000"]
    assert stderr == "oops\n"
    assert adoptable_status(tmp_path / "guards" / "job") == 3


def test_job_that_cannot_start_fails_with_the_reason_in_its_stderr(tmp_path):
    status, _, stderr = _run(tmp_path, "true", cwd=tmp_path / "missing")
    assert status == 127
    assert "cannot start the job's process" in stderr and "missing" in stderr


def test_waiting_jobs_learn_when_the_spawner_dies(tmp_path):
    async def main() -> None:
        starter = spawner()
        with open(tmp_path / "log", "wb") as log:
            process = await starter.spawn(["/bin/sleep", "30"], {}, str(tmp_path), [log.fileno(), log.fileno()], None)
        os.kill(starter._process.pid, signal.SIGKILL)
        with pytest.raises(SpawnerGone):
            await asyncio.wait_for(process.wait(), 10)
        os.kill(process.pid, signal.SIGKILL)  # it ran on, as wrappers do when their launcher dies
        assert spawner() is not starter  # the next job gets a new spawner

    asyncio.run(main())
