"""The nspawn tier's machine behaves like the NixOS test driver's where scenarios could tell the
difference, so that a scenario passing here does not fail in the VM tests."""

from __future__ import annotations

import ast
import inspect
import os
import time
from pathlib import Path

import pytest
from conftest import missing, require_program
from system.machine import MachineError, NspawnMachine


def test_reboot_needs_allow_reboot_as_in_the_nixos_test_driver(tmp_path):
    machine = NspawnMachine(tmp_path / "rootfs", "repx-test", tmp_path / "log")
    with pytest.raises(MachineError, match="allow_reboot"):
        machine.reboot()  # refused before anything runs: the driver's QEMU would exit instead


def test_the_vm_tests_that_reboot_ask_for_it():
    root = Path(__file__).resolve().parents[2]
    single = (root / "nixos-tests" / "single-node.nix").read_text()
    assert "reboot_mid_run_completes" in single and "machine.start(allow_reboot=True)" in single


# ---- commands run as the driver runs them ---------------------------------------------------
# nsenter into this test's own namespaces stands in for the container's leader: the same argv,
# `timeout` and `bash` run for real, on this host.

STUB = Path(__file__).resolve().parents[1] / "typecheck" / "driver_stub" / "test_driver" / "machine" / "__init__.pyi"


@pytest.fixture
def host(tmp_path):

    require_program("nsenter")
    if os.geteuid() != 0:
        missing("nsenter into this host's namespaces needs root")
    machine = NspawnMachine(tmp_path / "rootfs", "repx-test", tmp_path / "log")
    machine.leader = os.getpid()
    return machine


def test_execute_fails_a_pipeline_that_fails_anywhere_as_under_set_euo_pipefail(host):
    assert host.execute("false | true")[0] == 1
    assert host.execute("yes | head -n 1")[0] == 141  # yes died of SIGPIPE: why scenarios avoid `| grep -q`
    assert host.execute("echo $REPX_SURELY_UNSET")[0] != 0
    assert host.execute("false; true")[0] == 1


def test_execute_returns_stdout_only_and_the_status_of_timeout(host):
    assert host.execute("echo out; echo err >&2") == (0, "out\n")
    assert host.execute("sleep 5", timeout=1)[0] == 124  # a status, as in the driver, not an exception
    with pytest.raises(MachineError, match="exit code 124"):
        host.succeed("sleep 5", timeout=1)


def test_wait_until_succeeds_retries_once_a_second(host, tmp_path):
    count = tmp_path / "count"
    attempt = f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}; test $n -ge 2 && echo done"
    started = time.monotonic()
    assert host.wait_until_succeeds(attempt, timeout=30) == "done\n"
    assert count.read_text() == "3\n" and time.monotonic() - started >= 2


def test_wait_until_succeeds_gives_up_after_its_timeout_with_a_last_try(host, tmp_path):
    count = tmp_path / "count"
    started = time.monotonic()
    with pytest.raises(MachineError, match="timeout=2"):
        host.wait_until_succeeds(f"echo x >> {count}; false", timeout=2)
    assert 2 <= time.monotonic() - started < 5
    assert len(count.read_text().split()) == 3  # at 0 s and 1 s, then the last try at 2 s


def test_the_driver_methods_have_the_drivers_signatures():
    """Each driver method the system tier's machine has takes the driver's parameters and defaults
    (from the typed stub of the driver that tests/typecheck checks the scenarios against)."""
    stub = ast.parse(STUB.read_text())
    driver = {}
    for cls in (node for node in stub.body if isinstance(node, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            driver.setdefault(fn.name, fn)
    ours = ast.parse(Path(inspect.getfile(NspawnMachine)).read_text())
    (cls,) = (n for n in ours.body if isinstance(n, ast.ClassDef) and n.name == "NspawnMachine")
    shared = [fn for fn in cls.body if isinstance(fn, ast.FunctionDef) and fn.name in driver]
    assert {fn.name for fn in shared} >= {"execute", "succeed", "fail", "wait_until_succeeds", "wait_for_unit", "start"}

    def shape(fn: ast.FunctionDef) -> tuple:
        args = fn.args
        return ([a.arg for a in args.args], [ast.unparse(d) for d in args.defaults],
                [ast.unparse(a.annotation) for a in args.args if a.annotation],
                args.vararg and ast.unparse(args.vararg.annotation), [ast.unparse(d) for d in args.kw_defaults])

    for fn in shared:
        expected = driver[fn.name]
        if fn.name == "start":  # QemuMachine's start, which takes allow_reboot
            expected = next(n for n in ast.walk(stub) if isinstance(n, ast.FunctionDef) and n.name == "start"
                            and n.args.args[1:])
        assert shape(fn) == shape(expected), f"{fn.name}: ours {ast.unparse(fn.args)}, driver {ast.unparse(expected.args)}"
