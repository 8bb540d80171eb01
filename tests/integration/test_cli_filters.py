"""Filters, sizes and --json are validated and honoured everywhere; `list deps` and `viz` agree
(issue 15: `jobs --state bogus` printed `(none)`, `--mem 12Q` a traceback, `--cat` without KEY was
ignored, `log`/`viz` refused --json, `list deps` said `(none)` where `viz` drew an edge)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli import repxctl
from service import Daemon

from repxd.lab.writer import LabWriter


def two_run_lab(dest: Path) -> tuple[Path, dict[str, str]]:
    """first: produce, other; second (after first): consume -> last. Returns the Lab and stage -> id."""
    writer = LabWriter()
    first = writer.run("first")
    produce = first.job("produce", "#!/bin/sh\necho one > \"$1/x\"\n", outputs={"x": "$out/x"})
    other = first.job("other", "#!/bin/sh\necho two > \"$1/y\"\n", outputs={"y": "$out/y"})
    second = writer.run("second")
    second.depends_on(first)
    consume = second.job("consume", "#!/bin/sh\necho three > \"$1/z\"\necho 3 > \"$1/n\"\necho said three\n",
                         outputs={"z": "$out/z", "n": "$out/n"})
    last = second.job("last", "#!/bin/sh\necho four > \"$1/w\"\n", inputs={"z": consume.output("z")}, outputs={"w": "$out/w"})
    return writer.write(dest), {"produce": produce.id, "other": other.id, "consume": consume.id, "last": last.id}


@pytest.fixture
def lab(tmp_path):
    path, ids = two_run_lab(tmp_path / "lab")
    return path, ids, ["--lab", path, "--base-path", tmp_path / "base"]


def assert_usage_error(result, *words: str) -> None:
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_daemon_jobs_state_filter_names_the_valid_states():
    daemon = Daemon.create()
    daemon.start("all")
    try:
        env = daemon.env | {"REPX_API": str(daemon.socket)}
        assert_usage_error(repxctl("jobs", "--state", "bogus", env=env), "bogus", "running", "succeeded", "cancelled")
        assert repxctl("jobs", "--state", "running", env=env).code == 0
        assert_usage_error(repxctl("runs", "--limit", "0", env=env), "--limit", "1<=x<=1000")
    finally:
        daemon.stop()


def test_list_jobs_status_filter_names_the_valid_states(lab):
    _, _, opts = lab
    assert_usage_error(repxctl("list", "jobs", "--status", "bogus", *opts), "bogus", "succeeded", "blocked")


@pytest.mark.parametrize("mode", [["--embedded"], ["--api", "/nonexistent/api.sock"]])
def test_bad_memory_size_is_a_usage_error(lab, tmp_path, mode):
    _, _, opts = lab
    assert_usage_error(repxctl("run", "second", *opts, "--mem", "12Q", *mode), "--mem", "12Q", "4G")
    assert not (tmp_path / "base").exists()


def test_cat_without_key_prints_every_output(lab):
    _, ids, opts = lab
    missing = repxctl("show", "output", ids["last"], "--cat", *opts)
    assert_usage_error(missing, "w", "does not exist yet")
    assert repxctl("run", "second", *opts, "--embedded").code == 0
    one = repxctl("show", "output", ids["last"], "--cat", *opts)
    assert (one.code, one.stdout) == (0, "four\n")
    several = repxctl("show", "output", ids["consume"], "--cat", *opts)
    assert several.code == 0, several.stderr
    z, n = (repxctl("show", "output", ids["consume"], key, *opts).stdout.strip() for key in ("z", "n"))
    assert several.stdout == f"==> n: {n} <==\n3\n\n==> z: {z} <==\nthree\n"


def test_log_json_is_one_object_with_path_and_content(lab):
    _, ids, opts = lab
    assert repxctl("run", "second", *opts, "--embedded").code == 0
    result = repxctl("log", ids["consume"], "--json", *opts)
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["job"] == ids["consume"] and data["stream"] == "stdout"
    assert data["content"] == Path(data["path"]).read_text() == "said three\n"
    assert_usage_error(repxctl("log", ids["consume"], "--json", "--follow", *opts), "--json", "--follow")


def test_log_json_through_the_daemon(tmp_path):
    path, ids = two_run_lab(tmp_path / "lab")
    daemon = Daemon.create()
    daemon.start("all")
    try:
        env = daemon.env | {"REPX_API": str(daemon.socket)}
        assert repxctl("run", "second", "--lab", path, env=env).code == 0
        data = repxctl("log", ids["consume"], "--json", env=env).json()
        assert (data["job"], data["content"]) == (ids["consume"], "said three\n")
    finally:
        daemon.stop()


def test_list_deps_agrees_with_the_edges_viz_draws(lab):
    _, ids, opts = lab
    graph = repxctl("viz", "--json", *opts).json()
    assert {n["id"] for n in graph["nodes"]} == set(ids.values())
    dot = repxctl("viz", *opts).stdout
    for job_id in ids.values():
        deps = repxctl("list", "deps", job_id, "--json", *opts).json()
        assert sorted(deps["dependencies"]) == sorted(e["from"] for e in graph["edges"] if e["to"] == job_id)
        assert sorted(deps["dependents"]) == sorted(e["to"] for e in graph["edges"] if e["from"] == job_id)
        assert deps["after_runs"] == {e["from_run"]: e["kind"] for e in graph["run_edges"] if e["to"] == job_id}
        # Every arrow in the drawing into this job is a dependency or a run it starts after.
        drawn = re.findall(rf'"([^"]+)" -> "{re.escape(job_id)}"(?: \[([^\]]*)\])?;', dot)
        job_arrows = sorted(src for src, attrs in drawn if "ltail" not in attrs)
        run_arrows = sorted(re.search(r'ltail="cluster_([^"]+)"', attrs).group(1) for _, attrs in drawn if "ltail" in attrs)
        assert job_arrows == sorted(deps["dependencies"])
        assert run_arrows == sorted(deps["after_runs"])
    # The run dependency is shown, as a run, on the job that waits for it.
    consume = repxctl("list", "deps", ids["consume"], *opts).stdout
    assert re.search(r"after run \(hard\)\s+first\s+0/2 succeeded", consume), consume


def test_viz_json_refuses_a_drawing_format(lab, tmp_path):
    _, _, opts = lab
    assert_usage_error(repxctl("viz", "--json", "-o", tmp_path / "g.svg", *opts), "--json")
    assert json.loads(repxctl("viz", "second", "--json", *opts).stdout)["run_edges"] == []
