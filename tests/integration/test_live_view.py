"""The live view of `repxctl run` on a real terminal: a progress bar with counts, elapsed and
ETA, and a table of the running jobs that tells apart jobs of one stage by their parameters.
Rendered by tmux (a real terminal emulator) and read back with capture-pane."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

from conftest import require_program
from definitions import HEADER, NAP

from repxd.lab.writer import LabWriter


def three_naps(path):
    """Three jobs of one stage `nap`, told apart only by `seconds`."""
    lab = LabWriter(git_hash="3a9e3a9e" * 5)
    run = lab.run("naps")
    for seconds in (3, 4, 5):
        run.job("nap", NAP, params={"seconds": seconds}, outputs={"rested": "$out/rested.txt"})
    return lab.write(path)


def screens(server: list[str], running: Callable[[str], bool], timeout: float) -> tuple[str, str]:
    """The tmux screen first seen `running`, and the screen once the command printed EXIT=
    (both printed to the test log); "" for one never seen within `timeout` seconds."""
    while_running = final = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
        if running(screen) and not while_running:
            while_running = screen
        if "EXIT=" in screen:
            final = screen
            break
        time.sleep(0.3)
    print("--- while running ---\n" + while_running + "\n--- at the end ---\n" + final)
    return while_running, final


def test_live_view_in_a_real_terminal(tmp_path):
    tmux = require_program("tmux")
    lab = three_naps(tmp_path / "lab")
    server = ["tmux", "-L", f"repx-test-{tmp_path.name}"]
    command = f"{shutil.which('repxctl')} run naps --lab {lab} --base-path {tmp_path / 'base'} -j 2 > /dev/null; echo EXIT=$?; sleep 60"
    subprocess.run([*server, "new-session", "-d", "-x", "120", "-y", "40", command], check=True, executable=tmux)
    try:
        while_running, final = screens(server, lambda screen: "running 2" in screen and "pending 1" in screen, 60)
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    assert while_running, "never saw two running jobs and one pending on the screen"
    # -j 2: two naps run, the third waits
    assert "done 0 · failed 0 · running 2 · pending 1" in while_running
    assert "━" in while_running and "ETA" in while_running and "0/3" in while_running
    # one row per running job: id prefix, stage with the parameter that tells them apart, elapsed
    rows = [line.split() for line in while_running.splitlines() if "nap-1.0[seconds=" in line]
    assert len(rows) == 2, while_running
    assert {row[1] for row in rows} == {"nap-1.0[seconds=3]", "nap-1.0[seconds=4]"}
    assert all(len(row[0]) == 12 and row[2].endswith("s") for row in rows), rows
    assert "EXIT=0" in final
    assert "done 3 · failed 0 · running 0 · pending 0" in final and "3/3" in final
    assert "Done in" in final


def test_elapsed_keeps_moving_between_job_events(tmp_path):
    """The old status line was redrawn only on job events; this one refreshes on a timer."""
    tmux = require_program("tmux")
    lab = three_naps(tmp_path / "lab")
    server = ["tmux", "-L", f"repx-test-{tmp_path.name}"]
    command = f"{shutil.which('repxctl')} run naps --lab {lab} --base-path {tmp_path / 'base'} -j 1 > /dev/null; sleep 60"
    subprocess.run([*server, "new-session", "-d", "-x", "120", "-y", "40", command], check=True, executable=tmux)
    try:
        elapsed_seen = set()
        deadline = time.monotonic() + 2.5
        time.sleep(0.8)
        while time.monotonic() < deadline:
            screen = subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
            rows = [line for line in screen.splitlines() if "nap-1.0[seconds=" in line]
            elapsed_seen.update(line.split()[-1] for line in rows)
            time.sleep(0.4)
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    # during the first 3-second nap nothing else happens, yet its elapsed time advances
    assert len(elapsed_seen) >= 3, elapsed_seen


def test_live_view_following_a_daemon_run(tmp_path, daemon):
    """A run submitted to the daemon shows the same view, fed from the daemon's job states."""
    tmux = require_program("tmux")
    lab = three_naps(tmp_path / "lab")
    server = ["tmux", "-L", f"repx-test-{tmp_path.name}"]
    command = f"REPX_API={daemon.socket} {shutil.which('repxctl')} run naps --lab {lab} > /dev/null; echo EXIT=$?; sleep 60"
    subprocess.run([*server, "new-session", "-d", "-x", "120", "-y", "40", command], check=True, executable=tmux, env=daemon.env)
    try:
        while_running, final = screens(server, lambda screen: "nap-1.0[seconds=" in screen, 90)
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    assert "Submitted run" in while_running and "ETA" in while_running and "/3" in while_running
    rows = [line.split() for line in while_running.splitlines() if "nap-1.0[seconds=" in line]
    assert rows and all(len(row[0]) == 12 and row[2].endswith("s") for row in rows), while_running
    assert "EXIT=0" in final, final + daemon.logs()
    assert "done 3 · failed 0 · running 0 · pending 0" in final and "3/3" in final


def test_a_failure_stays_above_the_live_view(tmp_path):
    tmux = require_program("tmux")
    lab = LabWriter(git_hash="fa11fa11" * 5)
    lab.run("broken").job("crash", HEADER + "echo giving up >&2\nexit 3\n", outputs={"never": "$out/never.txt"})
    path = lab.write(tmp_path / "lab")
    server = ["tmux", "-L", f"repx-test-{tmp_path.name}"]
    command = f"{shutil.which('repxctl')} run broken --lab {path} --base-path {tmp_path / 'base'} > /dev/null; echo EXIT=$?; sleep 60"
    subprocess.run([*server, "new-session", "-d", "-x", "160", "-y", "40", command], check=True, executable=tmux)
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while "EXIT=" not in screen and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = subprocess.run([*server, "capture-pane", "-p", "-J"], capture_output=True, text=True, check=True).stdout
        print(screen)
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    assert "EXIT=1" in screen
    (fail,) = [line for line in screen.splitlines() if line.startswith("FAIL ")]
    assert "-crash-1.0: exited with status 3 (log: " in fail and fail.endswith("/repx/stderr.log)")
    assert "done 0 · failed 1 · running 0 · pending 0" in screen
