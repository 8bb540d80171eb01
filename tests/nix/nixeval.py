"""Running Nix from the tests: parsing, and evaluating the module or the flake with nixpkgs lib.

Evaluation needs nixpkgs' lib (`NIXPKGS_LIB`: a nixpkgs checkout, nixpkgs.lib, or its lib/
directory). Without it those tests skip: a missing checkout is not a missing program, so
REPX_REQUIRE_SYSTEM_TESTS does not turn that skip into a failure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import missing, require_program

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NO_LIB = "NIXPKGS_LIB not set: point it at a nixpkgs lib checkout to evaluate the NixOS module"


class NixError(Exception):
    """nix-instantiate failed; the message is its stderr without Nix's own noise."""


def _clean(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if "build-users-group" not in line).strip()


def nix_instantiate() -> str:
    return require_program("nix-instantiate")


def nixpkgs_lib() -> Path:
    value = os.environ.get("NIXPKGS_LIB")
    if not value:
        missing(NO_LIB)
    root = Path(value)
    for candidate in (root / "lib", root):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate
    pytest.fail(f"NIXPKGS_LIB={value} holds no nixpkgs lib (neither lib/modules.nix nor modules.nix)")


def evaluate(file: Path, attr: str | None = None, **args: str) -> Any:
    """`nix-instantiate --eval --strict --json FILE [-A ATTR] --arg lib <nixpkgs lib> --arg K V`."""
    lib = nixpkgs_lib()
    command = [nix_instantiate(), "--eval", "--strict", "--json", str(file), "--arg", "lib", f"import {json.dumps(str(lib))}"]
    if attr:
        command += ["-A", attr]
    for name, expr in args.items():
        command += ["--arg", name, expr]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if result.returncode != 0:
        raise NixError(_clean(result.stderr))
    return json.loads(result.stdout)


def module_report(configuration: str, attr: str = "report") -> dict:
    """Evaluate nixos/module.nix with `configuration` (a NixOS module as a Nix expression)."""
    return evaluate(HERE / "eval.nix", attr, configuration=configuration)


def module_error(configuration: str) -> str:
    """The evaluation error `configuration` causes; fails the test if it evaluates."""
    try:
        module_report(configuration)
    except NixError as exc:
        return str(exc)
    pytest.fail(f"evaluated without error: {configuration}")


def parse(file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([nix_instantiate(), "--parse", str(file)], capture_output=True, text=True, timeout=60)
