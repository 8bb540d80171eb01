"""Bad input gets one clear line, exit 2, no traceback, and nothing written outside the base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli import repxctl
from definitions import simple


@pytest.fixture
def sandbox(tmp_path) -> dict[str, str]:
    """HOME and XDG directories inside tmp_path, to see what a command writes."""
    env = dict(os.environ)
    for var, sub in (("HOME", "home"), ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_CACHE_HOME", "cache")):
        (tmp_path / sub).mkdir()
        env[var] = str(tmp_path / sub)
    return env


def written(tmp_path: Path, exclude: set[str]) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file() and p.relative_to(tmp_path).parts[0] not in exclude)


def assert_one_line_error(result, *words: str) -> None:
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def corrupt(lab: Path) -> None:
    script = next(lab.glob("jobs/*-produce-1.0/bin/produce"))
    script.write_text(script.read_text() + "# tampered\n")


CASES = {
    "hash mismatch": (corrupt, ["SHA-256", "--no-verify"]),
    "missing job dir": (lambda lab: __import__("shutil").rmtree(next(lab.glob("jobs/*-square-1.0"))), ["square", "missing"]),
    "not a lab": (lambda lab: (lab / "lab" / "lab-metadata.json").unlink(), ["not a Lab"]),
    "broken json": (lambda lab: (lab / "revision" / "metadata-simulation.json").write_text("{nope"), ["metadata-simulation.json"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_lab_is_rejected(tmp_path, sandbox, case):
    mutate, words = CASES[case]
    lab = simple().write(tmp_path / "lab")
    mutate(lab)
    before = written(tmp_path, {"lab"})
    result = repxctl("run", "@all", "--lab", lab, "--base-path", tmp_path / "base", env=sandbox)
    assert_one_line_error(result, *words)
    assert written(tmp_path, {"lab"}) == before
    assert not (tmp_path / "base" / "outputs").exists()


def test_unknown_selector_lists_runs(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    result = repxctl("run", "nosuchrun", "--lab", lab, "--base-path", tmp_path / "base", env=sandbox)
    assert_one_line_error(result, "nosuchrun", "simulation", "analysis")


def test_ambiguous_prefix_lists_candidates(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    ids = [p.name for p in (lab / "jobs").iterdir()]
    prefix = "0" if sum(i.startswith("0") for i in ids) > 1 else "1"
    result = repxctl("run", prefix, "--lab", lab, "--base-path", tmp_path / "base", env=sandbox)
    assert result.code == 2
    assert "ambiguous" in result.stderr
    assert sum(i in result.stderr for i in ids if i.startswith(prefix)) >= 2


def test_unknown_config_key_names_key_and_file(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    config = tmp_path / "config.toml"
    config.write_text('[targets.local]\nbase_path = "/tmp/x"\nbase_pth = "/tmp/y"\n')
    result = repxctl("run", "@all", "--lab", lab, "--config", config, env=sandbox)
    assert_one_line_error(result, "base_pth", str(config))


def test_unknown_resources_key(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    resources = tmp_path / "resources.toml"
    resources.write_text('[defaults]\nmemory = "4G"\n')
    result = repxctl("run", "@all", "--lab", lab, "--base-path", tmp_path / "base", "--resources", resources, env=sandbox)
    assert_one_line_error(result, "memory", "resources.toml")


def test_missing_lab_and_bad_usage(tmp_path, sandbox):
    assert_one_line_error(repxctl("run", "x", "--lab", tmp_path / "none", env=sandbox), "not found")
    usage = repxctl("run", "x", "-j", "0", "--lab", tmp_path, env=sandbox)
    assert usage.code == 2 and "Traceback" not in usage.stderr


def test_config_target_supplies_base_path(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    config_dir = Path(sandbox["XDG_CONFIG_HOME"]) / "repx"
    config_dir.mkdir()
    base = tmp_path / "target-base"
    (config_dir / "config.toml").write_text(f'default_scheduler = "local"\n[targets.local]\nbase_path = "{base}"\n'
                                           '[targets.local.local]\nlocal_concurrency = 1\n')
    result = repxctl("run", "simulation", "--lab", lab, "--json", env=sandbox)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["base_path"] == str(base)
    assert (base / "outputs" / "completions.jsonl").exists()


def test_default_base_path_is_under_xdg_state(tmp_path, sandbox):
    lab = simple().write(tmp_path / "lab")
    result = repxctl("run", "simulation", "--lab", lab, "--json", env=sandbox)
    assert result.code == 0, result.stderr
    assert result.json()["base_path"] == str(Path(sandbox["XDG_STATE_HOME"]) / "repx" / "local")
