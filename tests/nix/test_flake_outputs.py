"""flake.nix's outputs, evaluated with nixpkgs' real lib and fake package sets (see
tests/nix/flake-outputs.nix): the attribute names users and `nix flake check` rely on, and the
module defaulting to the flake's own package without the overlay."""

from __future__ import annotations

import pytest
from nixeval import HERE, evaluate

SYSTEMS = ["aarch64-linux", "x86_64-linux"]


@pytest.fixture(scope="module")
def outputs():
    return evaluate(HERE / "flake-outputs.nix")


def test_output_attribute_names(outputs):
    assert outputs["packages"] == {s: ["default", "repx"] for s in SYSTEMS}
    assert outputs["nixosModules"] == ["default", "repx"]
    assert outputs["overlays"] == ["default"]
    assert outputs["devShells"] == {s: ["default"] for s in SYSTEMS}
    assert outputs["formatter"] == SYSTEMS
    assert outputs["checks"] == {s: ["module-eval", "package", "vm-cluster", "vm-single-node", "vm-slurm", "vm-ssh"] for s in SYSTEMS}
    assert outputs["nixpkgsUrl"].startswith("github:NixOS/nixpkgs/") and outputs["description"]


def test_package_overlay_and_module_share_nixos_package_nix(outputs):
    assert outputs["defaultPackage"] == "package.nix-x86_64-linux"
    assert outputs["overlayRepx"] == "package.nix-x86_64-linux"


def test_module_builds_the_package_from_the_hosts_package_set(outputs):
    """Not pinned to the flake's own nixpkgs: the host's pkgs builds it (its overlays and cross
    settings apply), and a host with a `repx` of its own (the overlay) gets that."""
    assert outputs["modulePackage"] == "package.nix-built-by-the-host"
    assert outputs["moduleUnits"] == ["package.nix-built-by-the-host"]
    assert outputs["overlayHostPackage"] == "repx-from-the-overlay"
