"""The NixOS VM test scripts and the scenarios they import type-check against the NixOS test
driver's API, as the driver's own mypy run does when a test does not set skipTypeCheck.

nixpkgs cannot be built here, so the driver is a typed stub (driver_stub/, written from the
driver's signatures; its docstring names the version). The package the scripts import is laid
out from nixos-tests/lib/scenario-modules.nix, the list the Nix package is built from."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require_program

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "driver_stub"
VM_TESTS = sorted(p for p in (ROOT / "nixos-tests").glob("*.nix") if "testScript" in p.read_text())


def scenario_modules() -> dict[str, Path]:
    """Module name -> source file, from the same Nix file the package derivation imports."""
    expr = f"builtins.mapAttrs (_: toString) (import {ROOT / 'nixos-tests/lib/scenario-modules.nix'})"
    done = subprocess.run([require_program("nix-instantiate"), "--eval", "--strict", "--json", "--expr", expr],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name: Path(path) for name, path in json.loads(done.stdout).items()}


def install_package(site: Path, modules: dict[str, Path]) -> Path:
    """What lib/scenarios-package.nix installs: repx_scenarios/ with __init__.py, py.typed, modules."""
    package = site / "repx_scenarios"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "py.typed").write_text("")
    for name, source in modules.items():
        shutil.copy(source, package / f"{name}.py")
    return package


def nix_indented_string(text: str) -> str:
    """The value of a Nix '' string body: common indentation removed, each interpolation a
    store path (what it is in these scripts), '' escapes undone."""
    body = re.sub(r"(?<!'')\$\{[^{}]*\}", "/nix/store/00000000000000000000000000000000-interpolated",
                  textwrap.dedent(text))
    return body.replace("''${", "${").replace("'''", "''")


def script_of(nix_file: Path) -> str:
    match = re.search(r"testScript = ''\n(.*?)\n\s*'';", nix_file.read_text(), re.DOTALL)
    assert match, f"{nix_file.name}: no testScript = '' ... '';"
    return nix_indented_string(match.group(1))


def node_names(nix_file: Path) -> list[str]:
    """The node names, which the driver declares to mypy as QemuMachine globals."""
    text = nix_file.read_text()
    names = re.findall(r"^\s*nodes\.(\w+)\s*=", text, re.MULTILINE)
    block = re.search(r"^(\s*)nodes = \{\n(.*?)\n\1\};", text, re.MULTILINE | re.DOTALL)
    if block:
        names += re.findall(r"^\s*(\w+)\s*=", block.group(2), re.MULTILINE)
    assert names, f"{nix_file.name}: no nodes found"
    return names


def typed_script(nix_file: Path) -> str:
    """The script as the driver hands it to mypy: prepended globals, one line per node, the script."""
    hints = "".join(f"{name}: QemuMachine\n" for name in node_names(nix_file))
    return (STUB / "prepend.py").read_text() + hints + script_of(nix_file)


def mypy(files: list[Path], site: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # The driver's flags (nixos/lib/testing/driver.nix); the stub and the package on MYPYPATH.
    env = {**os.environ, "MYPYPATH": f"{STUB}{os.pathsep}{site}"}
    return subprocess.run([sys.executable, "-m", "mypy", "--no-implicit-optional", "--pretty", "--no-color-output",
                           "--cache-dir", str(cache), *map(str, files)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return scenario_modules()


def scripts(tmp_path: Path) -> list[Path]:
    out = []
    for nix_file in VM_TESTS:
        script = tmp_path / f"{nix_file.stem.replace('-', '_')}_script.py"
        script.write_text(typed_script(nix_file))
        out.append(script)
    return out


def test_every_vm_test_is_type_checked():
    assert {p.name for p in VM_TESTS} == {"single-node.nix", "cluster.nix", "slurm.nix", "ssh.nix"}
    for nix_file in VM_TESTS:
        assert "skipTypeCheck" not in nix_file.read_text(), f"{nix_file.name} skips the driver's type check"


def test_the_vm_scripts_and_scenarios_type_check_against_the_driver(tmp_path, modules):
    install_package(tmp_path / "site", modules)
    done = mypy(scripts(tmp_path), tmp_path / "site", tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("call", "error"), [
    ("machine.wait_until_succeeds('true', timeout=1.5)", "[arg-type]"),  # the driver's timeouts are int
    ("machine.wait_for_open_port('8420')", "[arg-type]"),
    ("machine.reboot()", "[attr-defined]"),  # only a QemuMachine reboots, not every machine
    ("machine.copy_file_from_host('a', 'b')", "[attr-defined]"),  # no such method in the driver
])
def test_a_scenario_calling_outside_the_driver_api_is_rejected(tmp_path, modules, call, error):
    package = install_package(tmp_path / "site", modules)
    scenarios = package / "scenarios.py"
    scenarios.write_text(scenarios.read_text() + f"\n\ndef broken(machine: BaseMachine) -> None:\n    {call}\n")
    done = mypy(scripts(tmp_path), tmp_path / "site", tmp_path / "cache")
    assert done.returncode == 1 and error in done.stdout, done.stdout + done.stderr
    assert "scenarios.py" in done.stdout
