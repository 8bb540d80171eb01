# What the driver prepends to a test script before its mypy run (nixpkgs
# nixos/lib/test-script-prepend.py, then driver.nix's `<node>: QemuMachine;` lines, which the
# type-check test appends): the globals our test scripts use, with their types. Same driver
# version as test_driver/machine/__init__.pyi.
from collections.abc import Callable
from contextlib import AbstractContextManager

from test_driver.machine import QemuMachine  # noqa: F401 (the node lines appended below use it)

start_all: Callable[[], None]
join_all: Callable[[], None]
subtest: Callable[[str], AbstractContextManager[None]]
