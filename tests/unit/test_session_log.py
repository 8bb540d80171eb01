"""repxctl's session log and config.toml's [logging], next to upstream's repx-core logging.rs."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from cli import repxctl

from repxd.observe.session_log import level_from_env, prune
from repxd.user_config import LoggingSettings, load_config


def test_logging_section_defaults_are_upstreams(tmp_path: Path) -> None:
    """Upstream config.rs LoggingConfig: max_files 50, max_age_days 7."""
    path = tmp_path / "config.toml"
    path.write_text("")
    assert load_config(path).logging == LoggingSettings(max_files=50, max_age_days=7)


@pytest.mark.parametrize(("value", "level"), [
    ("debug", logging.DEBUG), ("TRACE", logging.DEBUG), ("warn", logging.WARNING),
    ("Error", logging.ERROR), ("info", logging.INFO), ("loud", logging.INFO), ("", logging.INFO)])
def test_repx_log_level(monkeypatch: pytest.MonkeyPatch, value: str, level: int) -> None:
    """Upstream set_log_level_from_env: REPX_LOG_LEVEL, case-insensitive; unknown values ignored."""
    monkeypatch.setenv("REPX_LOG_LEVEL", value)
    assert level_from_env() == level


def test_prune_keeps_max_files_and_drops_old_ones(tmp_path: Path) -> None:
    """Upstream rotate_logs: sorted by name, the oldest beyond max_files removed, then any whose
    age exceeds max_age_days; only `repx_*.log` files are touched."""
    now = time.time()
    names = [f"repx_2026-01-0{i}_00-00-00_1.log" for i in range(1, 6)]
    for i, name in enumerate(names):
        (tmp_path / name).write_text("x")
        age = 10 * 86400 if i == 2 else 0
        os.utime(tmp_path / name, (now - age, now - age))
    (tmp_path / "other.log").write_text("x")
    prune(tmp_path, LoggingSettings(max_files=3, max_age_days=7), now)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.log", names[3], names[4]]
    prune(tmp_path, LoggingSettings(max_files=0, max_age_days=0), now)  # 0: no limit
    assert len(list(tmp_path.iterdir())) == 3


def test_repxctl_writes_a_session_log(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               REPX_LOG_LEVEL="debug")
    (tmp_path / "config" / "repx").mkdir(parents=True)
    (tmp_path / "config" / "repx" / "config.toml").write_text("[logging]\nmax_files = 2\n")
    logs = tmp_path / "cache" / "repx" / "logs"
    logs.mkdir(parents=True)
    for i in range(4):
        (logs / f"repx_2000-01-0{i}_00-00-00_1.log").write_text("old")
    repxctl("show", "job", "x", "--lab", tmp_path / "no-lab", env=env)
    kept = sorted(p.name for p in logs.iterdir())
    assert len(kept) == 3 and kept[:2] == ["repx_2000-01-02_00-00-00_1.log", "repx_2000-01-03_00-00-00_1.log"]
    newest = (tmp_path / "cache" / "repx" / "repx.log").resolve()
    assert newest == logs / kept[2]
    assert "show job x" in newest.read_text()


def test_nothing_logged_nothing_written(tmp_path: Path) -> None:
    """Ours, not upstream's: upstream makes the file at start; ours at the first record, so a
    rejected command at the default level leaves the cache directory untouched."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("REPX_LOG_LEVEL", None)
    result = repxctl("show", "job", "x", "--lab", tmp_path / "no-lab", env=env)
    assert result.code == 2
    assert not (tmp_path / "cache").exists()


def test_unwritable_cache_does_not_stop_the_command(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), REPX_LOG_LEVEL="debug")
    result = repxctl("show", "job", "x", "--lab", tmp_path / "no-lab", env=env)
    assert result.code == 2 and result.stderr.startswith("repxctl: error:"), result.stderr
