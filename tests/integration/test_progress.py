"""On a terminal, `repxctl run` redraws one status line; elsewhere it prints a line per job."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess

from cli import repxctl
from definitions import sweep_scatter


def test_live_status_line_on_a_terminal(tmp_path):
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
    assert "\r\x1b[K" in text  # the line is redrawn in place
    assert "7/7 done · 7 ok · 0 failed · 0 running · 0 waiting" in text
    assert "Done in" in text


def test_plain_lines_when_not_a_terminal(tmp_path):
    lab = sweep_scatter().write(tmp_path / "lab")
    result = repxctl("run", "sweep", "--lab", lab, "--base-path", tmp_path / "base")
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and lines[-1].startswith("[7/7] ok")
    assert "\x1b" not in result.stdout + result.stderr
