"""journald and sd_notify through libsystemd (systemd-python) and, on a host without it, through
the stdlib fallback: both against a real systemd-journald and a real NOTIFY_SOCKET (issue 15).

The journald is this host's systemd-journald binary, run in a private mount namespace with
empty /run and /var/log/journal, so the daemon, repxctl and journalctl started in that
namespace (nsenter) see only the test's journal and the host's is never touched. The fallback
is a host without the package: a `systemd` module on PYTHONPATH whose import fails."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import missing, require_system
from service import Daemon
from test_observe import read_datagrams

from repxd.lab.writer import LabWriter

JOURNALD_PATHS = ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
# Mounted before journald starts: its sockets, its runtime journal and the persistent one, all fresh.
PRIVATE_JOURNAL = ("mount -t tmpfs tmpfs /run && "
                   "{ ! [ -d /var/log/journal ] || mount -t tmpfs tmpfs /var/log/journal; } && exec \"$0\"")


@pytest.fixture(params=["libsystemd", "stdlib"])
def python_env(request, tmp_path) -> dict[str, str]:
    """The environment repxd and repxctl run with: systemd-python importable, or blocked."""
    env = dict(os.environ)
    if request.param == "libsystemd":
        if importlib.util.find_spec("systemd") is None:
            missing("systemd-python is not installed (pip install '.[systemd]', which builds against "
                    "libsystemd-dev; .ci/run does)")
    else:
        blocked = tmp_path / "no-libsystemd" / "systemd"
        blocked.mkdir(parents=True)
        (blocked / "__init__.py").write_text('raise ImportError("systemd-python is not installed on this host")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocked.parent), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def private_journald():
    """The command prefix that runs a program beside a journald of its own."""
    journald = next((path for path in JOURNALD_PATHS if Path(path).exists()), None)
    require_system([name for name, found in (("systemd-journald", journald), ("unshare", shutil.which("unshare")),
                                             ("nsenter", shutil.which("nsenter"))) if not found],
                   "apt install systemd util-linux", "a private mount namespace for journald needs root")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             PRIVATE_JOURNAL, journald], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    socket_path = Path(f"/proc/{proc.pid}/root/run/systemd/journal/socket")
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"systemd-journald did not start: {proc.communicate()[0].decode(errors='replace')}")
        time.sleep(0.05)
    yield ["nsenter", f"--mount=/proc/{proc.pid}/ns/mnt", "--"]
    proc.terminate()
    proc.wait(timeout=30)


def two_job_lab(dest: Path) -> tuple[Path, str, str]:
    """One run, two independent jobs: one succeeds, one exits 3."""
    writer = LabWriter()
    run = writer.run("pair")
    good = run.job("good", "#!/bin/sh\necho fine > \"$1/x\"\n", outputs={"x": "$out/x"})
    bad = run.job("bad", "#!/bin/sh\necho broken >&2\nexit 3\n", outputs={"y": "$out/y"})
    return writer.write(dest), good.id, bad.id


def repxctl_in(prefix: list[str], env: dict[str, str], *args: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([*prefix, shutil.which("repxctl"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_log_journal_prints_the_jobs_lines_and_only_its(private_journald, python_env, tmp_path):
    lab, good, bad = two_job_lab(tmp_path / "lab")
    d = Daemon.create()
    d.config.write_text("log_journald = true\n" + d.config.read_text())
    d.env, d.command_prefix = python_env, private_journald
    env = python_env | {"REPX_API": str(d.socket)}
    env.pop("REPX_LAB", None)
    try:
        d.start("all")
        ran = repxctl_in(private_journald, env, "run", "pair", "--lab", lab)
        assert ran.returncode == 1, ran.stderr
        shown = {job: repxctl_in(private_journald, env, "log", job[:12], "--journal") for job in (good, bad)}
    finally:
        d.stop()
    for job, other in ((good, bad), (bad, good)):
        assert shown[job].returncode == 0, shown[job].stderr
        lines = shown[job].stdout.splitlines()
        assert any(line.endswith(f"repx-all: running {job}") for line in lines), shown[job].stdout
        assert other not in shown[job].stdout
    assert any(line.endswith("succeeded") for line in shown[good].stdout.splitlines()), shown[good].stdout
    assert any(line.endswith("failed") for line in shown[bad].stdout.splitlines()), shown[bad].stdout

    last = repxctl_in(private_journald, env, "log", bad, "--journal", "-n", "1", "--json")
    assert last.returncode == 0, last.stderr
    record = json.loads(last.stdout)
    assert record["job"] == bad and record["stream"] == "journal"
    assert record["content"].count("\n") == 1 and record["content"].rstrip().endswith("failed")

    with_lab = repxctl_in(private_journald, env, "log", good[:12], "--journal", "--lab", lab)
    assert with_lab.returncode == 0 and with_lab.stdout == shown[good].stdout, with_lab.stderr

    unknown = repxctl_in(private_journald, env, "log", "0000nosuchjob", "--journal")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "REPX_JOB_ID" in unknown.stderr


@pytest.mark.parametrize("option", [["--follow"], ["--stderr"], ["--api", "/nonexistent/api.sock"]])
def test_log_journal_refuses_what_it_cannot_honour_with_a_sentence(option):
    result = subprocess.run([shutil.which("repxctl"), "log", "abc", "--journal", *option], capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and option[0] in result.stderr, result.stderr


def test_notifications_reach_notify_socket(python_env, tmp_path):
    d = Daemon.create()
    d.env = python_env
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        d.env.update(NOTIFY_SOCKET=str(notify_path))
        try:
            d.start("all")
            messages = read_datagrams(sock, "READY=1")
            assert any("READY=1" in m and "STATUS=" in m for m in messages), messages
            d.kill("all", signal.SIGTERM)
            assert any("STOPPING=1" in m for m in read_datagrams(sock, "STOPPING=1"))
        finally:
            d.stop()
