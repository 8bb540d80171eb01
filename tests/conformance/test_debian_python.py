"""The reference Lab, as a directory and as a tar, embedded and through the daemon, with repx
installed on Debian's own Python (/usr/bin/python3, 3.11.2 on Debian 12: no tar extraction
filters), as the system tier and NixOS install it: repxd and repxctl run from a venv of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import missing
from service import Daemon

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_lab  # noqa: E402
from test_reference_lab import check_output_tree  # noqa: E402

SYSTEM_PYTHON = Path("/usr/bin/python3")
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def system_venv(tmp_path_factory) -> Path:
    """This checkout installed (not editable) into a venv of /usr/bin/python3, once per session."""
    if not SYSTEM_PYTHON.exists():
        missing("there is no /usr/bin/python3 (Debian's python3)")
    venv = tmp_path_factory.mktemp("debian-python") / "venv"
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"/usr/bin/python3 -m venv failed (apt install python3-venv; .ci/run does): {made.stderr.strip()}")
    started = time.monotonic()
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(CHECKOUT)],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        missing(f"installing repx into a venv of /usr/bin/python3 failed (it needs the package index): {pip.stderr[-2000:]}")
    print(f"venv of /usr/bin/python3 made in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return venv


def _reference_lab(tmp_path: Path, form: str) -> Path:
    lab = reference_lab.build()
    return lab.write_tar(tmp_path / "lab.tar") if form == "tar" else lab.write(tmp_path / "lab")


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_lab_runs_through_the_daemon_on_debians_python(system_venv: Path, tmp_path: Path, form: str) -> None:
    path = _reference_lab(tmp_path, form)
    daemon = Daemon.create()
    daemon.env["PATH"] = f"{system_venv / 'bin'}{os.pathsep}{daemon.env['PATH']}"
    try:
        proc = daemon.start("all")
        # The daemon is the system interpreter (the venv's python is a link to it), not the test's.
        assert Path(f"/proc/{proc.pid}/exe").resolve() == SYSTEM_PYTHON.resolve()
        env = dict(daemon.env, REPX_API=str(daemon.socket))
        run = subprocess.run([str(system_venv / "bin" / "repxctl"), "run", "@all", "--lab", str(path), "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in run.stderr + daemon.logs()
        assert run.returncode == 0, run.stderr + daemon.logs()
        assert json.loads(run.stdout)["state"] == "succeeded"
        check_output_tree(path, daemon.base)
    finally:
        daemon.stop()


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_lab_runs_embedded_on_debians_python(system_venv: Path, tmp_path: Path, form: str) -> None:
    path = _reference_lab(tmp_path, form)
    base = tmp_path / "base"
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("REPX_API", None)
    run = subprocess.run([str(system_venv / "bin" / "repxctl"), "run", "@all", "--lab", str(path), "--embedded",
                          "--base-path", str(base), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ok"]
    check_output_tree(path, base)
