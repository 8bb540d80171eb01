"""repxctl top: the Textual UI driven headless by its pilot against a live daemon and an
embedded base path, and once in a real terminal (tmux) whose screen is printed to the log."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

from cli import repxctl
from conftest import require_program
from definitions import NAP, simple

from repxctl.daemon import connect
from repxctl.top import build_app
from repxctl.top_sources import DaemonSource, EmbeddedSource
from repxd.lab.writer import LabWriter


def table_cells(app, table_id: str) -> list[list[str]]:
    table = app.query_one(f"#{table_id}")
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_top_on_an_embedded_base_path(tmp_path):
    lab = simple().write(tmp_path / "lab")
    assert repxctl("run", "@all", "--lab", lab, "--base-path", tmp_path / "base").code == 0

    async def drive():
        app = build_app(EmbeddedSource(tmp_path / "base"))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            jobs = table_cells(app, "jobs")
            assert len(jobs) == 4 and {row[2] for row in jobs} == {"succeeded"}
            assert {row[0] for row in jobs} >= {"produce-1.0", "square-1.0", "total-1.0"}
            await pilot.press("c")
            assert "needs the daemon" in str(app.query_one("#status").render())
            app.save_screenshot(str(tmp_path / "top.svg"))  # as docs/top.svg was made
            await pilot.press("q")
        assert app.return_code in (0, None)

    asyncio.run(drive())
    svg = (tmp_path / "top.svg").read_text()
    assert svg.startswith("<svg") and "total-1.0" in svg.replace("&#160;", " ")


def test_top_following_the_daemon(tmp_path, daemon):
    env = {**daemon.env, "REPX_API": str(daemon.socket)}
    lab = simple().write(tmp_path / "lab")
    assert repxctl("run", "@all", "--lab", lab, env=env).code == 0

    async def drive():
        app = build_app(DaemonSource(connect(str(daemon.socket))))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            runs = table_cells(app, "runs")
            assert len(runs) == 1 and runs[0][1] == "succeeded" and "succeeded=4" in runs[0][2]
            jobs = table_cells(app, "jobs")
            assert len(jobs) == 4 and {row[2] for row in jobs} == {"succeeded"}
            await pilot.press("d")
            assert "draining agent-1" in str(app.query_one("#status").render())
            await pilot.press("q")

    asyncio.run(drive())
    agents = connect(str(daemon.socket)).call("GET", "/v1/agents")
    assert agents[0]["state"] == "draining"


def test_top_in_a_real_terminal(tmp_path):
    tmux = require_program("tmux")
    lab = simple().write(tmp_path / "lab")
    assert repxctl("run", "@all", "--lab", lab, "--base-path", tmp_path / "base").code == 0
    server = ["tmux", "-L", f"repx-test-{tmp_path.name}"]
    command = f"{shutil.which('repxctl')} top --base-path {tmp_path / 'base'}; sleep 30"
    subprocess.run([*server, "new-session", "-d", "-x", "120", "-y", "40", command], check=True, executable=tmux,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while "total-1.0" not in screen and time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
        print(screen)
        subprocess.run([*server, "send-keys", "q"], check=True)
        time.sleep(1.5)
        after = subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    assert "repx top" in screen and "succeeded" in screen and "total-1.0" in screen
    assert "log of" in screen
    assert "repx top" not in after  # q quit the UI


def test_top_cancels_and_retries_a_daemon_run(tmp_path, daemon):
    env = {**daemon.env, "REPX_API": str(daemon.socket)}
    lab = LabWriter(git_hash="70b70b70" * 5)
    lab.run("naps").job("nap", NAP, params={"seconds": 30}, outputs={"rested": "$out/rested.txt"})
    submitted = repxctl("run", "naps", "--lab", lab.write(tmp_path / "lab"), "--detach", env=env)
    run_id = submitted.stdout.strip()
    api = connect(str(daemon.socket))

    async def drive(key: str) -> str:
        app = build_app(DaemonSource(api))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press(key)
            status = str(app.query_one("#status").render())
            await pilot.press("q")
        return status

    assert f"cancelling run {run_id}" in asyncio.run(drive("c"))
    deadline = time.monotonic() + 30
    while api.call("GET", f"/v1/runs/{run_id}")["state"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert api.call("GET", f"/v1/runs/{run_id}")["state"] == "cancelled", daemon.logs()
    assert f"retrying the failed jobs of run {run_id}" in asyncio.run(drive("r"))
    assert api.call("GET", f"/v1/runs/{run_id}")["state"] != "cancelled"


def test_top_without_a_daemon_says_what_to_do(tmp_path):
    result = repxctl("top", "--api", tmp_path / "nobody.sock")
    assert result.code == 2
    assert "no repx daemon answers at" in result.stderr and "--base-path" in result.stderr
