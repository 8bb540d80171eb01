"""sd_notify: READY, STATUS, WATCHDOG and STOPPING datagrams, through libsystemd (the
`systemd-python` package) where it is installed, else sent over NOTIFY_SOCKET here."""

from __future__ import annotations

import asyncio
import os
import socket

try:
    from systemd import daemon as libsystemd_daemon
except ImportError:  # no libsystemd bindings: the datagram is sent below
    libsystemd_daemon = None


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if libsystemd_daemon is not None:
        try:
            return bool(libsystemd_daemon.notify(message))
        except OSError:
            return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def ready(status: str) -> None:
    notify(f"READY=1\nSTATUS={status}")


def status(text: str) -> None:
    notify(f"STATUS={text}")


def stopping() -> None:
    notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC (when it is meant for this process), in seconds."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog_loop(healthy) -> None:
    """Ping the watchdog while `healthy()` holds; a stuck loop stops the pings and systemd restarts us."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
