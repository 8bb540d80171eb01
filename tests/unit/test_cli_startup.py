"""`repxctl --help` stays fast (issue 15: 0.5-0.7 s, aiohttp imported eagerly): the commands are
imported when used, and the help they are listed with is the help their docstrings give."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repxctl.main import LAZY_COMMANDS, cli

HEAVY = ("aiohttp", "httpx", "textual", "rich", "pydantic", "prometheus_client")


def loaded_modules_after(*args: str) -> set[str]:
    """The top-level packages imported by `repxctl ARGS`, run in a fresh interpreter."""
    script = ("import sys\nfrom repxctl.main import main\nsys.argv = ['repxctl', *sys.argv[1:]]\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    return set(done.stderr.strip().splitlines()[-1].split())


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_no_heavy_library(args):
    assert not loaded_modules_after(*args) & set(HEAVY)


def test_a_command_still_loads_what_it_needs():
    loaded = loaded_modules_after("status", "--api", "/nonexistent/repx.sock")  # tries the daemon
    assert "httpx" in loaded
    assert "aiohttp" not in loaded  # one HTTP client library (httpx) for repxctl and the agent


def test_run_loads_the_http_client_only_to_talk_to_a_daemon():
    # `repxctl run --embedded` never connects: the client's import (~0.3 s) is not paid.
    assert "httpx" not in loaded_modules_after("run", "--help")


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_listed_help_is_the_commands_own(name):
    command = cli.get_command(None, name)
    assert command is not None
    assert command.get_short_help_str(10**6) == LAZY_COMMANDS[name][2]


def test_help_lists_every_command_as_when_all_are_loaded():
    lazy = subprocess.run([sys.executable, "-c", "from repxctl.main import main; main()", "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    loaded = subprocess.run([sys.executable, "-c", "import sys\nfrom repxctl.main import cli, main\n"
                             "[cli.get_command(None, n) for n in cli.list_commands(None)]\nmain()", "--help"],
                            capture_output=True, text=True, timeout=60).stdout
    assert lazy == loaded and all(f"  {name} " in lazy for name in LAZY_COMMANDS)
