"""Reading `outputs/completions.jsonl` (lab-format §6) without reading it all again each time.

The log only grows (one line appended per completion), and every submit to a long-running
daemon asks it which of the planned jobs are done: reading and parsing the whole history each
time made a submit cost more the more jobs the base path had run. So the last outcome per job is
kept per log, and a read parses only the lines appended since; a log replaced or rewritten (by
a user, or `repxctl gc`) is read again from its start: another file, a shorter one, or other
bytes where the last read ended say so."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..lab.graph import Outcome

CHUNK_BYTES = 1 << 20
TAIL_BYTES = 64
KEPT_LOGS = 8  # base paths whose logs stay parsed (a daemon serves a few; each costs its job count)


@dataclass
class _ParsedLog:
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file parsed
    offset: int = 0  # bytes parsed: up to the end of the last whole line
    tail: bytes = b""  # the bytes just before `offset`: still there unless the log was rewritten
    outcomes: dict[str, Outcome] = field(default_factory=dict)


_logs: OrderedDict[Path, _ParsedLog] = OrderedDict()
_lock = threading.Lock()  # submits plan in worker threads


def read_outcomes(path: Path) -> Mapping[str, Outcome] | None:
    """The last outcome per job in the log at `path` (read-only); None when there is none, or
    when something other than a regular file is there (a FIFO would block the read). Corrupt
    lines (a crash mid-append, manual edits) are skipped; a last line without its newline is
    left for the read after the append that completes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with open(fd, "rb", closefd=True) as log, _lock:
        found = os.fstat(log.fileno())
        if not stat.S_ISREG(found.st_mode):
            return None
        parsed = _logs.pop(path, None) or _ParsedLog()
        if ((found.st_dev, found.st_ino) != parsed.identity or found.st_size < parsed.offset
                or os.pread(log.fileno(), len(parsed.tail), parsed.offset - len(parsed.tail)) != parsed.tail):
            parsed = _ParsedLog((found.st_dev, found.st_ino))
        _logs[path] = parsed
        while len(_logs) > KEPT_LOGS:
            _logs.popitem(last=False)
        log.seek(parsed.offset)
        rest = b""
        while chunk := log.read(CHUNK_BYTES):
            whole = rest + chunk
            end = whole.rfind(b"\n") + 1
            _parse(whole[:end], parsed.outcomes)
            parsed.offset += end
            if end:
                parsed.tail = whole[max(0, end - TAIL_BYTES):end]
            rest = whole[end:]
        return MappingProxyType(parsed.outcomes)


def _parse(lines: bytes, outcomes: dict[str, Outcome]) -> None:
    for line in lines.splitlines():
        try:
            record = json.loads(line)
            outcomes[record["id"]] = Outcome(record["s"])
        except (ValueError, KeyError, TypeError):
            continue
