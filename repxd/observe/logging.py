"""Logs to journald with REPX_* fields under systemd (or when asked), else to stderr.

Records go through libsystemd (the `systemd-python` package, the `systemd` extra) where it is
installed; on a host without it, the journal's native protocol is spoken over its socket here."""

from __future__ import annotations

import logging
import os
import socket
import sys

try:
    from systemd import journal as libsystemd_journal
except ImportError:  # no libsystemd bindings: the stdlib sender below
    libsystemd_journal = None

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def native_datagram(fields: dict[str, str]) -> bytes:
    """The journal's native protocol: one datagram per record, fields as KEY=value lines (a value
    with a newline as KEY, its little-endian 64-bit length, the bytes)."""
    payload = bytearray()
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            payload += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            payload += key.encode() + b"=" + data + b"\n"
    return bytes(payload)


class JournaldHandler(logging.Handler):
    """Each record as one journal entry with REPX_* fields. `path` names a journal socket to
    speak the native protocol to; without it, libsystemd sends (if installed) to the system's."""

    def __init__(self, role: str, path: str | None = None) -> None:
        super().__init__()
        self.role = role
        self.path = None if path is None and libsystemd_journal is not None else path or JOURNAL_SOCKET
        if self.path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(PRIORITIES.get(record.levelno, 6)),
            "SYSLOG_IDENTIFIER": f"repx-{self.role}",
            "REPX_ROLE": self.role,
            "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName,
        }
        for key in ("run_id", "job_id", "attempt"):
            value = getattr(record, key, None)
            if value is not None:
                fields[f"REPX_{key.upper()}"] = str(value)
        try:
            if self.path is None:
                libsystemd_journal.send(**fields | {"CODE_LINE": record.lineno})  # it formats the line as a number
            else:
                self.sock.sendto(native_datagram(fields), self.path)
        except OSError:
            self.handleError(record)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={getattr(record, k)}" for k in ("run_id", "job_id", "attempt") if getattr(record, k, None) is not None)
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        line = f"{base} [{extra}]" if extra else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(role: str, level: str = "info", journald: bool | None = None) -> logging.Logger:
    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM")) and os.path.exists(JOURNAL_SOCKET)
    root = logging.getLogger("repx")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    if journald:
        root.addHandler(JournaldHandler(role))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter())
        root.addHandler(handler)
    return root
