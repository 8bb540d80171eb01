"""sd_notify, journald records and config checking, against real sockets and processes."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time

from service import Daemon

from repxd.observe.logging import JournaldHandler


def read_datagrams(sock: socket.socket, until: str, timeout: float = 20) -> list[str]:
    messages = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(65536).decode())
        except TimeoutError:
            continue
        if any(until in m for m in messages):
            return messages
    raise AssertionError(f"no {until!r} among {messages}")


def test_roles_notify_ready_status_watchdog_and_stopping(tmp_path):
    d = Daemon.create()
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        d.env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")
        try:
            d.start("api")
            messages = read_datagrams(sock, "READY=1")
            assert any("STATUS=serving on" in m for m in messages)
            d.start("scheduler")
            messages = read_datagrams(sock, "STATUS=scheduling")
            assert any("READY=1" in m and "STATUS=scheduling" in m for m in messages)
            assert any("WATCHDOG=1" in m for m in messages + read_datagrams(sock, "WATCHDOG=1"))
            d.kill("scheduler", signal.SIGTERM)
            assert any("STOPPING=1" in m for m in read_datagrams(sock, "STOPPING=1"))
        finally:
            d.stop()


def test_journald_records_carry_repx_fields(tmp_path):
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        logger = logging.getLogger("repx.test-journald")
        handler = JournaldHandler("agent", str(path))
        logger.addHandler(handler)
        try:
            logger.warning("job %s failed\nsecond line", "j1", extra={"run_id": "r1", "job_id": "j1"})
        finally:
            logger.removeHandler(handler)
        payload = sock.recv(65536)
    fields = {}
    rest = payload
    while rest:
        line, _, rest = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
        else:  # binary-safe form: KEY\n<le64 length><data>\n
            size = int.from_bytes(rest[:8], "little")
            fields[line.decode()] = rest[8:8 + size].decode()
            rest = rest[8 + size + 1:]
    assert fields["MESSAGE"] == "job j1 failed\nsecond line"
    assert fields["REPX_ROLE"] == "agent" and fields["REPX_RUN_ID"] == "r1" and fields["REPX_JOB_ID"] == "j1"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "repx-agent"


def test_check_config_reports_every_error_with_its_key(tmp_path):
    config = tmp_path / "repxd.toml"
    config.write_text('log_level = "loud"\n[api]\nsokcet = "/x"\n[scheduler]\nlease_seconds = -1\n'
                      '[targets.local]\nbase_path = "/w"\ndefault_execution_type = "qemu"\n')
    result = subprocess.run(["repxd", "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for key in ("log_level", "api.sokcet", "scheduler.lease_seconds", "targets.local.default_execution_type"):
        assert any(key in line for line in lines), (key, lines)
    good = tmp_path / "good.toml"
    good.write_text('[api]\nsocket = "/run/repx/api.sock"\n[targets.local]\nbase_path = "/w"\n')
    ok = subprocess.run(["repxd", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    started = subprocess.run(["repxd", "api", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert started.returncode == 2 and "Traceback" not in started.stderr and len(started.stderr.splitlines()) == 1
