"""Job processes started through the spawner process (repxd/exec/spawner.py): real processes,
real descriptors, the exit status and the guard's files as the launcher leaves them."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repxd.exec.launcher import SubprocessLauncher, adoptable_status, guarded, launch_request
from repxd.exec.layout import OutputLayout, Preparation
from repxd.exec.processes import SpawnerGone, spawner
from repxd.exec.runtimes import Invocation
from repxd.lab.graph import Outcome


def ready(out: Path, repx: Path) -> Preparation:
    """The preparation of directories a test made itself: it keeps `out/` and clears markers only."""
    return Preparation(out, repx, False)


def _run(tmp_path: Path, script: str, cwd: Path | None = None) -> tuple[int, str, str]:
    out, repx = tmp_path / "out", tmp_path / "repx"
    out.mkdir(exist_ok=True)
    repx.mkdir(exist_ok=True)
    invocation = Invocation(["/bin/sh", "-c", script], {"PATH": os.environ["PATH"]}, cwd or out)

    async def main() -> int:
        async with guarded(tmp_path / "guards" / "job") as guard:
            return await SubprocessLauncher().run(invocation, repx, guard, launch_request("job", "", 1),
                                                  ready(out, repx))

    status = asyncio.run(main())
    return status, (repx / "stdout.log").read_text(), (repx / "stderr.log").read_text()


def test_job_gets_status_logs_exit_record_and_a_plain_signal_state(tmp_path):
    # SigIgn all zero: a job's `yes | head -1` ends by SIGPIPE and Ctrl-C reaches it, as from a shell.
    status, stdout, stderr = _run(tmp_path, "grep SigIgn /proc/self/status; echo oops >&2; "
                                            "ls /proc/$$/fd | grep -qv '^[0-3]$' && echo leaked; exit 3")
    assert status == 3
    assert stdout.split() == ["SigIgn:", "0000000000000000"]
    assert stderr == "oops\n"
    assert adoptable_status(tmp_path / "guards" / "job") == 3


def test_job_killed_by_a_signal_records_the_signal(tmp_path):
    status, _, _ = _run(tmp_path, "kill -KILL $$")
    assert status == -signal.SIGKILL
    assert adoptable_status(tmp_path / "guards" / "job") == -signal.SIGKILL


def test_record_is_written_before_the_lock_is_free_even_when_the_launcher_is_gone(tmp_path):
    """A launcher killed while its job runs: the spawner stays, writes the exit record, and only
    then lets go of the lock, which is what the next launcher waits for before it adopts."""
    guard = tmp_path / "guards" / "job"
    launcher = subprocess.Popen([sys.executable, "-c", f"""
import asyncio, os, sys
from pathlib import Path
from repxd.exec.launcher import SubprocessLauncher, guarded, launch_request
from repxd.exec.layout import Preparation
from repxd.exec.runtimes import Invocation
async def main():
    async with guarded(Path({str(guard)!r})) as g:
        await SubprocessLauncher().run(Invocation(["/bin/sh", "-c", "echo started; sleep 1; exit 5"], dict(os.environ),
                                                  Path({str(tmp_path)!r})), Path({str(tmp_path)!r}), g, launch_request("job", "", 1),
                                       Preparation(Path({str(tmp_path / "out")!r}), Path({str(tmp_path)!r}), False))
asyncio.run(main())
"""])
    deadline = time.monotonic() + 20
    while "started" not in ((tmp_path / "stdout.log").read_text() if (tmp_path / "stdout.log").exists() else ""):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    launcher.kill()
    launcher.wait()

    async def adopt():
        async with guarded(guard) as g:
            return g.leftover_status

    assert asyncio.run(adopt()) == 5


def test_cancelled_job_leaves_no_status_for_the_next_attempt_to_adopt(tmp_path):
    (tmp_path / "out").mkdir()
    invocation = Invocation(["/bin/sh", "-c", "sleep 30"], {"PATH": os.environ["PATH"]}, tmp_path / "out")

    async def main() -> None:
        async with guarded(tmp_path / "guards" / "job") as guard:
            job = asyncio.create_task(SubprocessLauncher().run(invocation, tmp_path, guard, launch_request("job", "", 1),
                                                               ready(tmp_path / "out", tmp_path)))
            await asyncio.sleep(0.5)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

    asyncio.run(main())
    assert adoptable_status(tmp_path / "guards" / "job") is None


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


def test_a_log_that_cannot_be_created_fails_the_start_naming_it_and_the_next_job_still_runs(tmp_path):
    """The spawner creates the job's logs: a job directory removed under the run makes the start
    fail with the errno and path, as the launcher's own open() would say it, and nothing is left
    running or held."""
    gone = tmp_path / "removed" / "repx"
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> tuple[OSError, int]:
        async with guarded(tmp_path / "guards" / "job") as guard:
            with pytest.raises(OSError) as failed:
                await SubprocessLauncher().run(Invocation(["/bin/true"], {}, out), gone, guard,
                                               launch_request("job", "", 1), ready(out, out))
        async with guarded(tmp_path / "guards" / "next") as guard:
            status = await SubprocessLauncher().run(Invocation(["/bin/sh", "-c", "echo ran"], {}, out),
                                                    out, guard, launch_request("next", "", 1), ready(out, out))
        return failed.value, status

    error, status = asyncio.run(main())
    assert error.errno == errno.ENOENT and error.filename == str(gone / "stdout.log")
    assert f"{error.strerror}: {error.filename}".startswith("No such file or directory: ")
    assert adoptable_status(tmp_path / "guards" / "job") is None
    assert status == 0 and (out / "stdout.log").read_text() == "ran\n"


def test_jobs_get_the_launchers_scheduling_policy_not_the_spawners(tmp_path):
    """The spawner runs as a batch task (it must not preempt the launcher's event loop); the jobs
    it starts are scheduled as the launcher is."""
    status, stdout, _ = _run(tmp_path, "grep '^policy' /proc/self/sched")
    assert status == 0
    assert int(stdout.split(":")[1]) == os.sched_getscheduler(0)


def test_a_run_cancelled_while_its_process_is_being_started_stops_that_process(tmp_path):
    """Ctrl-C between the request to the spawner and its answer: the process it then starts is
    stopped, not left running (nor waited for when the run exits)."""
    out, repx = tmp_path / "out", tmp_path / "repx"
    out.mkdir()
    repx.mkdir()
    pid_file = tmp_path / "job.pid"
    invocation = Invocation(["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], {"PATH": os.environ["PATH"]}, out)

    async def main() -> None:
        async with guarded(tmp_path / "guards" / "job") as guard:
            run = asyncio.create_task(SubprocessLauncher().run(invocation, repx, guard, launch_request("job", "", 1),
                                                               ready(out, repx)))
            await asyncio.sleep(0)  # the request is sent; the spawner has not answered yet
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run

    asyncio.run(main())
    # The spawner creates the job's logs as it starts it: the request did reach it.
    deadline = time.monotonic() + 10
    while not (repx / "stdout.log").exists():
        assert time.monotonic() < deadline, "the cancellation came before the request went out"
        time.sleep(0.05)
    time.sleep(2)  # a job left running has written its pid by now; a stopped one may never have
    if pid_file.exists() and pid_file.read_text().strip():
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid):
            assert time.monotonic() < deadline, "the job started during the cancellation still runs"
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "gone"


def test_each_job_gets_its_own_environment_when_environments_repeat_and_outnumber_those_kept(tmp_path):
    """The spawner keeps the environments it was sent and later gets only their ids: jobs that
    alternate among more environments than it keeps each still see exactly their own."""
    from repxd.exec.processes import KEPT_ENVIRONMENTS

    names = [f"env{i}" for i in range(KEPT_ENVIRONMENTS + 3)]
    order = [*names, names[0], names[-1], names[1], *names[:3]]

    async def main() -> list[str]:
        starter = spawner()
        seen = []
        for index, name in enumerate(order):
            log = tmp_path / f"{index}.log"
            env = {"PATH": os.environ["PATH"], "WHICH": name}
            process = await starter.spawn(["/bin/sh", "-c", "echo $WHICH; env | wc -l"], env, str(tmp_path), [],
                                          None, logs=(str(log), str(log)))
            assert await process.wait() == 0
            seen.append(log.read_text().split())
        return seen

    seen = asyncio.run(main())
    assert [line[0] for line in seen] == order
    assert {int(line[1]) for line in seen} <= {2, 3, 4}  # PATH, WHICH, and what sh itself sets (PWD)


def test_jobs_started_at_once_past_the_sockets_queue_each_get_their_own_environment(tmp_path):
    """Many requests at once, with environments large enough to fill the socket's queue: a request
    that waits for room must not refer to an environment whose first sending is still waiting."""
    padding = "x" * 60_000

    async def main() -> list[list[str]]:
        starter = spawner()

        async def one(index: int) -> list[str]:
            log = tmp_path / f"{index}.log"
            env = {"PATH": os.environ["PATH"], "WHICH": f"env{index % 12}", "PADDING": padding}
            process = await starter.spawn(["/bin/sh", "-c", "echo $WHICH"], env, str(tmp_path), [], None,
                                          logs=(str(log), str(log)))
            assert await process.wait() == 0
            return [f"env{index % 12}", log.read_text().strip()]

        return await asyncio.gather(*(one(index) for index in range(120)))

    for wanted, seen in asyncio.run(main()):
        assert seen == wanted


def _run_prepared(tmp_path: Path, params) -> tuple[int, str]:
    """A job whose directories and JSON files a Preparation makes, as execute_single has it."""
    out, repx = tmp_path / "outputs" / "job" / "out", tmp_path / "outputs" / "job" / "repx"
    prepare = Preparation(out, repx, True, {"inputs.json": {"in": "/x/y"}, "parameters.json": params})
    invocation = Invocation(["/bin/sh", "-c", 'ls -A; cat ../repx/parameters.json'], {"PATH": os.environ["PATH"]}, out)

    async def main() -> int:
        async with guarded(tmp_path / "guards" / "job") as guard:
            return await SubprocessLauncher().run(invocation, repx, guard, launch_request("job", "", 1), prepare)

    status = asyncio.run(main())
    assert (repx / "inputs.json").read_text() == json.dumps({"in": "/x/y"}, indent=2)
    return status, (repx / "stdout.log").read_text()


@pytest.mark.parametrize("size", [10, 100_000])  # the spawner writes the files; too large for a request: the launcher
def test_a_first_attempt_starts_in_directories_made_for_it_with_its_files_written(tmp_path, size):
    params = {"offset": 1.5, "name": "é" * size, "nested": [None, True, {"k": 2}]}
    status, stdout = _run_prepared(tmp_path, params)
    assert status == 0
    assert stdout == json.dumps(params, indent=2)  # an empty out/, and the job reads its parameters


def test_a_retry_starts_in_an_emptied_out_without_the_earlier_markers(tmp_path):
    job = tmp_path / "outputs" / "job"
    (job / "out").mkdir(parents=True)
    (job / "repx").mkdir()
    (job / "out" / "stale").write_text("from the attempt before")
    (job / "repx" / "FAIL").touch()
    (job / "repx" / "parameters.json").write_text("old")
    status, stdout = _run_prepared(tmp_path, {"offset": 2})
    assert status == 0
    assert stdout == json.dumps({"offset": 2}, indent=2)
    assert sorted(p.name for p in (job / "repx").iterdir()) == ["inputs.json", "parameters.json", "stderr.log", "stdout.log"]


@pytest.mark.parametrize("script", ["exit 0", "exit 1"])
def test_the_spawner_writes_a_successs_marker_and_completion_line_and_nothing_for_a_failure(tmp_path, script):
    layout = OutputLayout(tmp_path)
    out, repx = layout.out_dir("job"), layout.repx_dir("job")
    invocation = Invocation(["/bin/sh", "-c", script], {"PATH": os.environ["PATH"]}, out)

    async def main() -> int:
        async with guarded(layout.guard(repx)) as guard:
            return await SubprocessLauncher().run(invocation, repx, guard, launch_request("job", "", 1),
                                                  Preparation(out, repx, True),
                                                  success=layout.success_evidence("job", repx))

    status = asyncio.run(main())
    assert status.recorded is (status == 0)
    assert (repx / "SUCCESS").exists() is (status == 0)
    assert layout.read_completions() == ({"job": Outcome.OK} if status == 0 else None)


def test_success_evidence_the_spawner_cannot_write_is_left_to_the_launcher(tmp_path):
    layout = OutputLayout(tmp_path)
    repx = layout.repx_dir("job")
    repx.mkdir(parents=True)
    evidence = {**layout.success_evidence("job", repx), "completions": str(tmp_path / "missing" / "c.jsonl")}

    async def main() -> int:
        async with guarded(layout.guard(repx)) as guard:
            return await SubprocessLauncher().run(Invocation(["true"], {"PATH": os.environ["PATH"]}, repx), repx,
                                                  guard, launch_request("job", "", 1), ready(repx.parent / "out", repx),
                                                  success=evidence)

    status = asyncio.run(main())
    assert status == 0 and status.recorded is False


def test_the_spawner_takes_back_its_own_descriptors_and_directory_after_each_start(tmp_path):
    """It points its descriptors 0-3 and its working directory at a job's just for the fork: after
    a start, a message of its own (on its stderr) cannot land in that job's log, and a removed job
    directory is not its working directory."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()

    async def main() -> None:
        starter = spawner()
        with open(tmp_path / "log", "wb") as log:
            process = await starter.spawn(["/bin/sleep", "30"], {}, str(job_dir), [log.fileno(), log.fileno()], None)
        try:
            proc = Path(f"/proc/{starter._process.pid}")
            assert os.readlink(proc / "cwd") != str(job_dir)
            for fd in ("0", "1", "2"):
                assert os.readlink(proc / "fd" / fd) != str(tmp_path / "log"), fd
            assert os.readlink(Path(f"/proc/{process.pid}/cwd")) == str(job_dir)
            assert os.readlink(Path(f"/proc/{process.pid}/fd/1")) == str(tmp_path / "log")
        finally:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()

    asyncio.run(main())
