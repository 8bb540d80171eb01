"""Every .nix file parses, and the files the package and the module build from are there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from nixeval import ROOT, _clean, parse

from repxd.observe.metrics import AgentMetrics, ApiMetrics, SchedulerMetrics

SKIP_DIRS = {".git", ".venv", "build", "dist", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}


def nix_files() -> list[Path]:
    """Tracked and not-ignored .nix files (git's view), else every .nix file outside SKIP_DIRS."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        listed = subprocess.run([git, "ls-files", "--cached", "--others", "--exclude-standard", "*.nix"],
                                cwd=ROOT, capture_output=True, text=True)
        if listed.returncode == 0:
            return sorted(ROOT / line for line in listed.stdout.splitlines() if (ROOT / line).is_file())
    found = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.startswith("result")]
        found += [Path(directory) / f for f in files if f.endswith(".nix")]
    return sorted(found)


def test_the_flake_module_and_vm_tests_are_among_the_files():
    names = {str(p.relative_to(ROOT)) for p in nix_files()}
    assert {"flake.nix", "nixos/module.nix", "nixos/package.nix", "nixos-tests/default.nix"} <= names


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_parses(path):
    result = parse(path)
    assert result.returncode == 0, _clean(result.stderr)


def test_a_syntax_error_is_reported(tmp_path):
    broken = tmp_path / "broken.nix"
    broken.write_text("{ services.repx.enable = ; }\n")
    result = parse(broken)
    assert result.returncode != 0 and "syntax error" in result.stderr


def test_package_inputs_exist():
    """nixos/package.nix installs these; a rename must show up here, not in a Nix build."""
    package = (ROOT / "nixos/package.nix").read_text()
    for rel in re.findall(r"repxd/systemd/[\w.*-]+", package):
        assert list(ROOT.glob(rel)), f"nixos/package.nix installs {rel}, which does not exist"
    for unit in ROOT.glob("repxd/systemd/*.service"):
        assert "@REPXD@" in unit.read_text(), f"{unit.name} has no @REPXD@ for the package to substitute"


def exported_metric_names() -> set[str]:
    names = set()
    for metrics in (ApiMetrics(), SchedulerMetrics(), AgentMetrics()):
        for family in metrics.registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            names.update(family.name + s for s in suffixes)
    return names


def test_grafana_dashboard_queries_metrics_repx_exports():
    dashboard = json.loads((ROOT / "nixos/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\brepx_[a-z_]+", expr)}
    unknown = used - exported_metric_names()
    assert not unknown, f"the dashboard queries metrics no role exports: {sorted(unknown)}"
