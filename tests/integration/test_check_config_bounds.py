"""`repxd check-config` finds what the daemon would otherwise die on at start (issue 11): bad
listen addresses, memory sizes and token files, each one line naming its key, exit 2; and the
daemon started on such a file says the same in one line instead of a traceback."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BASE = '[targets.local]\nbase_path = "{root}/base"\n'


def repxd(*args: object, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(["repxd", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def token(path: Path, mode: int) -> Path:
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


@pytest.fixture
def root():
    # Not pytest's tmp_path: its parents are 0700, so nothing in it is readable by everyone.
    where = Path(tempfile.mkdtemp(prefix="repx-config-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where)


def write_config(root: Path, body: str) -> Path:
    """`body` (a table and its keys) with the socket and state of a private daemon."""
    config = root / "repxd.toml"
    table, _, keys = body.partition("\n")
    api = f'[api]\nsocket = "{root}/api.sock"\n' + (keys if table == "[api]" else "")
    rest = "" if table == "[api]" else body
    config.write_text(f'state_dir = "{root}/state"\n{api}{rest}'.format(root=root) + BASE.format(root=root))
    return config


CASES = {
    "tcp-not-host-port": ('[api]\ntcp = "not-a-hostport"\n', "api.tcp: 'not-a-hostport' is not host:port"),
    "tcp-port-too-big": ('[api]\ntcp = "127.0.0.1:99999"\n', "api.tcp: port 99999 in '127.0.0.1:99999' is out of range"),
    "metrics-port-zero": ('[scheduler]\nmetrics = "127.0.0.1:0"\n', "scheduler.metrics: port 0"),
    "metrics-host-with-path": ('[agent]\nmetrics = "/tmp/x:9422"\n', "agent.metrics: '/tmp/x:9422' is not host:port"),
    "memory-unit": ('[agent]\nmem = "12Q"\n', "agent.mem: '12Q' is not a memory size"),
    "token-missing": ('[api]\nadmin_token_file = "{root}/nope"\n', "api.admin_token_file: token file {root}/nope: cannot read (No such file or directory)"),
    "token-a-directory": ('[api]\nagent_token_file = "{root}"\n', "api.agent_token_file: token file {root}: cannot read (Is a directory)"),
    "token-world-readable": ('[agent]\ntoken_file = "{root}/open"\n', "agent.token_file: token file {root}/open is readable by every local user"),
}


@pytest.mark.parametrize("case", CASES)
def test_check_config_refuses_with_one_line(root, case):
    token(root / "open", 0o644)
    body, says = CASES[case]
    config = write_config(root, body)
    proc = repxd("check-config", config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"{config}: ") and says.format(root=root) in line, line


@pytest.mark.parametrize("case", ["tcp-port-too-big", "memory-unit", "token-missing", "token-world-readable"])
def test_the_daemon_started_on_such_a_config_says_it_in_one_line(root, case):
    token(root / "open", 0o644)
    body, says = CASES[case]
    config = write_config(root, body)
    proc = repxd("agent" if body.startswith("[agent]") else "api", "--config", config)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert says.format(root=root).split(": ", 1)[1] in line, line
    assert not (root / "api.sock").exists()


def test_a_good_config_and_files_only_a_host_has(root):
    config = root / "repxd.toml"
    secret = token(root / "secret", 0o600)
    config.write_text(f'[api]\ntcp = "[::1]:8420"\nadmin_token_file = "{secret}"\n[agent]\nmem = "1.5G"\nmetrics = ""\n'
                      + BASE.format(root=root))  # an empty listener turns the agent's metrics off
    assert repxd("check-config", config).returncode == 0
    secret.unlink()  # as in a Nix build, where credentials exist only on the running host
    assert repxd("check-config", config).returncode == 2
    proc = repxd("check-config", config, "--no-files")
    assert proc.returncode == 0 and "OK" in proc.stdout
