"""The unit files shipped in the package: installable, clean for systemd-analyze, hardened."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import require_program

from repxd.units import UNITS, install_units

SCORE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("prefix")
    written = install_units(prefix, repxd="/usr/bin/true")
    return prefix, written


def test_install_units_writes_units_sysusers_and_tmpfiles(installed):
    prefix, written = installed
    names = {p.name for p in written}
    assert set(UNITS) <= names and {"repx.conf"} <= names
    api = (prefix / "etc/systemd/system/repx-api.service").read_text()
    assert "ExecStart=/usr/bin/true api --config /etc/repx/repxd.toml" in api
    assert "Type=notify" in api and "WatchdogSec=" in api and "@REPXD@" not in api
    assert (prefix / "etc/sysusers.d/repx.conf").read_text().startswith("g repx")


def test_systemd_analyze_verify_is_clean(installed):
    require_program("systemd-analyze")
    prefix, _ = installed
    unit_dir = prefix / "etc/systemd/system"
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *(f"./{u}" for u in UNITS)],
                            cwd=unit_dir, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_security_exposure(installed):
    require_program("systemd-analyze")
    prefix, _ = installed
    scores = {}
    for unit in ("repx-api.service", "repx-scheduler.service", "repx-agent.service", "repx-hwdetect.service"):
        result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", f"./{unit}"],
                                cwd=prefix / "etc/systemd/system", capture_output=True, text=True)
        match = SCORE.search(result.stdout)
        assert match, result.stdout + result.stderr
        scores[unit] = float(match.group(2))
    print("systemd-analyze security exposure:", scores)
    assert scores["repx-api.service"] <= 2.5 and scores["repx-scheduler.service"] <= 2.5
    assert scores["repx-hwdetect.service"] <= 2.5
    # The agent starts sandboxes (bwrap/podman namespaces) and sees devices; README explains.
    assert scores["repx-agent.service"] <= 4.0
