"""The nspawn tier's machine behaves like the NixOS test driver's where scenarios could tell the
difference, so that a scenario passing here does not fail in the VM tests."""

from __future__ import annotations

import pytest
from system.machine import MachineError, NspawnMachine


def test_reboot_needs_allow_reboot_as_in_the_nixos_test_driver(tmp_path):
    machine = NspawnMachine(tmp_path / "rootfs", "repx-test", tmp_path / "log")
    with pytest.raises(MachineError, match="allow_reboot"):
        machine.reboot()  # refused before anything runs: the driver's QEMU would exit instead


def test_the_vm_tests_that_reboot_ask_for_it():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    single = (root / "nixos-tests" / "single-node.nix").read_text()
    assert "reboot_mid_run_completes" in single and "machine.start(allow_reboot=True)" in single
