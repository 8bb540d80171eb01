"""On a terminal, `repxctl run` shows a live view (rich); elsewhere it prints a line per job."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess

from cli import repxctl
from definitions import sweep_scatter


def test_live_view_on_a_pseudo_terminal(tmp_path):
    lab = sweep_scatter().write(tmp_path / "lab")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([shutil.which("repxctl"), "run", "sweep", "--lab", str(lab), "--base-path", str(tmp_path / "base")],
                            stdout=subprocess.PIPE, stderr=follower, text=False)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    proc.wait(timeout=60)
    os.close(leader)
    text = screen.decode()
    assert proc.returncode == 0
    assert "\x1b[" in text  # drawn with terminal control sequences, in place
    assert "done 7 · failed 0 · running 0 · pending 0" in text and "7/7" in text
    assert "━" in text and "ETA" in text
    assert "Done in" in text


def test_plain_lines_when_not_a_terminal(tmp_path):
    lab = sweep_scatter().write(tmp_path / "lab")
    result = repxctl("run", "sweep", "--lab", lab, "--base-path", tmp_path / "base")
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and lines[-1].startswith("[7/7] ok")
    assert "\x1b" not in result.stdout + result.stderr
