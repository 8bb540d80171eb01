"""repxctl's session log, as upstream's (repx-core logging.rs): one file per invocation in
`$XDG_CACHE_HOME/repx/logs/repx_<time>_<pid>.log`, `repx.log` next to `logs/` pointing at the
newest, old files pruned by config.toml's `[logging]` (max_files, max_age_days; 0 turns a limit
off), the level from `REPX_LOG_LEVEL` (trace, debug, info, warn, error; anything else: info).
Unlike upstream, the file is made only when something is logged (see SessionFileHandler)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ..user_config import LoggingSettings

PREFIX = "repx_"
LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
          "WARN": logging.WARNING, "ERROR": logging.ERROR}


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repx"


def level_from_env() -> int:
    return LEVELS.get(os.environ.get("REPX_LOG_LEVEL", "").upper(), logging.INFO)


def prune(logs: Path, settings: LoggingSettings, now: float) -> None:
    """Upstream's rotate_logs, before the new file is made: the oldest beyond max_files, then any
    older than max_age_days."""
    entries = sorted(p for p in logs.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(".log"))
    if settings.max_files > 0 and len(entries) > settings.max_files:
        for path in entries[:len(entries) - settings.max_files]:
            path.unlink(missing_ok=True)
        entries = entries[len(entries) - settings.max_files:]
    if settings.max_age_days > 0:
        for path in entries:
            try:
                if now - path.stat().st_mtime > settings.max_age_days * 86400:
                    path.unlink()
            except FileNotFoundError:
                pass


class SessionFileHandler(logging.FileHandler):
    """Makes its file (pruning the old ones, pointing repx.log at it) at the first record, not at
    start: a command that logs nothing — a rejected bad input, say — writes nothing."""

    def __init__(self, settings: LoggingSettings) -> None:
        self.settings = settings
        self.logs = cache_home() / "logs"
        name = f"{PREFIX}{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}.log"
        super().__init__(self.logs / name, delay=True)

    def _open(self):
        """None when the cache directory is unusable: a log must never stop a command, so the
        records are dropped (FileHandler.emit writes nothing without a stream)."""
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            prune(self.logs, self.settings, time.time())
            stream = super()._open()
        except OSError:
            return None
        link = self.logs.parent / "repx.log"
        try:
            link.unlink(missing_ok=True)
            link.symlink_to(Path("logs") / Path(self.baseFilename).name)
        except OSError:
            pass  # the log itself is written; only the convenience link is missing
        return stream


def start_session_log(settings: LoggingSettings) -> None:
    handler = SessionFileHandler(settings)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)-5s] %(name)s: %(message)s"))
    root = logging.getLogger("repx")
    root.setLevel(level_from_env())
    root.addHandler(handler)
    root.debug("repxctl %s", " ".join(sys.argv[1:]))
