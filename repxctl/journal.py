"""`repxctl log JOB --journal`: the journal entries tagged REPX_JOB_ID=<job> (the agent's lines
about the job and, under the systemd launcher, systemd's about the job's unit), read through
libsystemd's journal.Reader (the `systemd-python` package) where it is installed, else through
`journalctl -o json`. Either way the same lines are printed."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime

from repxd.errors import RepxError, SelectionError

FIELD = "REPX_JOB_ID"


@dataclass
class Entry:
    when: datetime
    source: str  # SYSLOG_IDENTIFIER: repx-agent, or the job unit's name
    message: str

    def line(self) -> str:
        return f"{self.when:%Y-%m-%d %H:%M:%S} {self.source}: {self.message}"


def _text(value) -> str:
    """A field as text: libsystemd gives bytes (and journalctl a list of byte values) when the
    value is not UTF-8."""
    if isinstance(value, list):
        value = bytes(value)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _LibsystemdJournal:
    def __init__(self, journal) -> None:
        self.journal = journal

    def job_ids(self) -> set[str]:
        with self.journal.Reader() as reader:
            return {_text(value) for value in reader.query_unique(FIELD)}

    def entries(self, job_id: str) -> list[Entry]:
        with self.journal.Reader() as reader:
            reader.add_match(**{FIELD: job_id})
            return [Entry(entry["__REALTIME_TIMESTAMP"], _text(entry.get("SYSLOG_IDENTIFIER", "?")),
                          _text(entry.get("MESSAGE", ""))) for entry in reader]


class _Journalctl:
    def __init__(self, exe: str) -> None:
        self.exe = exe

    def _run(self, *args: str) -> str:
        proc = subprocess.run([self.exe, "--no-pager", "-q", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RepxError(f"journalctl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def job_ids(self) -> set[str]:
        return set(self._run("-F", FIELD).split())

    def entries(self, job_id: str) -> list[Entry]:
        entries = []
        for line in self._run("-o", "json", f"{FIELD}={job_id}").splitlines():
            entry = json.loads(line)
            when = datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
            entries.append(Entry(when, _text(entry.get("SYSLOG_IDENTIFIER", "?")), _text(entry.get("MESSAGE", ""))))
        return entries


def open_journal() -> _LibsystemdJournal | _Journalctl:
    try:
        from systemd import journal
    except ImportError:
        exe = shutil.which("journalctl")
        if exe is None:
            raise RepxError("reading the journal needs the systemd-python package (pip install 'repx[systemd]') "
                            "or journalctl; this host has neither") from None
        return _Journalctl(exe)
    return _LibsystemdJournal(journal)


def job_journal(spec: str, exact: bool = False) -> tuple[str, list[Entry]]:
    """The job whose id starts with `spec` (is `spec`, when `exact`), among those the journal
    knows, and its entries."""
    journal = open_journal()
    matches = sorted(job for job in journal.job_ids() if job == spec or not exact and job.startswith(spec))
    if not matches:
        raise SelectionError(f"no journal entry carries a {FIELD} starting with {spec!r}; has the job run under "
                             "repxd logging to journald (log_journald, the default under systemd)?")
    if len(matches) > 1:
        raise SelectionError(f"job-id prefix {spec!r} is ambiguous in the journal; it matches "
                             f"{len(matches)} jobs:\n  " + "\n  ".join(matches[:10]))
    return matches[0], journal.entries(matches[0])
