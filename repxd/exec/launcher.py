"""Starting a job's process and waiting for it. The subprocess launcher is the embedded default;
a systemd transient-unit launcher will implement the same `launch` later."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from .runtimes import Invocation

TERMINATE_GRACE_SECONDS = 10.0


async def run_process(invocation: Invocation, stdout: Path, stderr: Path) -> int:
    """Run to completion with stdout/stderr appended to the given files; returns the exit status
    (negative for a signal). Cancelling the awaiting task stops the whole process group."""
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *invocation.argv, cwd=invocation.cwd, env=invocation.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        await asyncio.shield(_stop(proc))
        raise


async def _stop(proc: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), wait)
            return
        except TimeoutError:
            continue
