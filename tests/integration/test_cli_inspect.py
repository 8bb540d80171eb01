"""The inspection commands (list, show, log, trace-params, viz, gc) as a user runs them.

Every test calls the installed `repxctl` executable on Labs written into a temporary directory and
run for real with `repxctl run`, once per module. Outputs go to `--base-path <tmp>/...`; the config
and state directories point into the temporary directory and no $REPX_* variable is passed on, so
the user's own config.toml and outputs are never read. Each call starts an interpreter (~0.4 s of
CPU), so tests batch independent calls with `many` and keep their number small.

Labs:
  simple         examples/labs: simulation (produce -> square -> total) and analysis (report); @all
  sweep-scatter  examples/labs: generate x3 (seed 1..3, size 4) -> partition (scatter-gather,
                 params seed/shift) -> collect
  chatty         written here: `talk` logs to stdout and stderr, writes a binary output and a
                 directory, and has a parameter with quotes; `fail` logs to stderr and exits 3
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import require_program

from repxd.lab.loader import load_lab
from repxd.lab.writer import LabWriter

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "examples" / "labs" / "definitions.py"


# ---- helpers ---------------------------------------------------------------------------------


def repxctl_command() -> list[str]:
    exe = shutil.which("repxctl")
    return [exe] if exe else [sys.executable, "-c", "from repxctl.main import main; main()"]


def example_labs():
    spec = importlib.util.spec_from_file_location("repx_example_labs", DEFINITIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_no_traceback(proc: subprocess.CompletedProcess) -> None:
    for stream in (proc.stdout, proc.stderr):
        text = stream.decode(errors="replace") if isinstance(stream, bytes) else stream
        assert "Traceback" not in text, text


@dataclass
class Cli:
    """Runs repxctl in a clean environment, in `home` (which has no ./result, so a missing --lab is
    really missing). Every call is checked for its exit status and for tracebacks."""

    home: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPX_")}
        for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
            env[var] = str(self.home / var.lower())
        self.env = env

    def __call__(self, *args: object, code: int = 0, text: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([*repxctl_command(), *map(str, args)], cwd=self.home, env=self.env,
                              capture_output=True, text=text, timeout=timeout)
        check_no_traceback(proc)
        assert proc.returncode == code, f"repxctl {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: object) -> object:
        return json.loads(self(*args, "--json").stdout)

    def error(self, *args: object, code: int = 2) -> str:
        """Run a command that must fail with one readable line on stderr; returns that line."""
        return one_line_error(self(*args, code=code))

    def many(self, commands: list[list[object]], code: int = 0) -> list[subprocess.CompletedProcess]:
        """Independent commands at once."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self(*args, code=code), commands))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("repxctl: error: "), proc.stderr
    return lines[0]


@dataclass
class RunLab:
    """A Lab at `lab` with outputs under `base`. `jobs` (id, run, stage, params) is read from the
    Lab in-process: it names the jobs the tests ask about, and is not what they check."""

    cli: Cli
    lab: Path
    base: Path
    jobs: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        lab = load_lab(self.lab, verify=False)
        self.jobs = [{"id": j.id, "run": j.run, "stage": j.name, "params": j.params} for j in lab.jobs.values()]

    @property
    def ids(self) -> list[str]:
        return [j["id"] for j in self.jobs]

    @property
    def opts(self) -> list[str]:
        return ["--lab", str(self.lab), "--base-path", str(self.base)]

    def __call__(self, *args: object, **kw) -> subprocess.CompletedProcess:
        return self.cli(*args, *self.opts, **kw)

    def json(self, *args: object) -> object:
        return self.cli.json(*args, *self.opts)

    def error(self, *args: object, code: int = 2) -> str:
        return self.cli.error(*args, *self.opts, code=code)

    def many(self, commands: list[list[object]], code: int = 0) -> list[str]:
        """The stdout of independent commands (each gets --lab and --base-path), run at once."""
        return [p.stdout for p in self.cli.many([[*c, *self.opts] for c in commands], code=code)]

    def job(self, stage: str, **params) -> str:
        """The id of the one job of `stage` (e.g. "square") with these params."""
        found = [j["id"] for j in self.jobs if j["stage"].rsplit("-", 1)[0] == stage
                 and all(j["params"].get(k) == v for k, v in params.items())]
        assert len(found) == 1, (stage, params, found)
        return found[0]

    def prefix(self, job_id: str) -> str:
        """The shortest prefix of `job_id` that names only it (what a user types)."""
        for n in range(1, len(job_id) + 1):
            if sum(i.startswith(job_id[:n]) for i in self.ids) == 1:
                return job_id[:n]
        return job_id


def run_lab(cli: Cli, lab: Path, base: Path, *specs: str, code: int = 0) -> RunLab:
    setup = RunLab(cli, lab.resolve(), base)
    setup("run", *specs, code=code)
    return setup


def ambiguous_prefix(ids: list[str]) -> tuple[str, list[str]]:
    """A prefix shared by two or more of `ids`, and the ids it matches. A job id's first character
    is 0 or 1 (a 256-bit hash in nix-base32), so three ids always give one."""
    for first in sorted({i[0] for i in ids}):
        matches = sorted(i for i in ids if i.startswith(first))
        if len(matches) > 1:
            return first, matches
    raise AssertionError(f"no two job ids share a first character: {ids}")


def table(stdout: str) -> list[list[str]]:
    """The rows of a plain table (header dropped), cells split on runs of two or more spaces."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def output_dirs(base: Path) -> set[str]:
    return {p.name for p in (base / "outputs").iterdir() if p.is_dir()}


TALK = """#!/bin/sh
set -eu
echo "hello from stdout"
echo "warning on stderr" >&2
printf '\\377\\376\\000binary' > "$1/blob.bin"
mkdir "$1/dir"
"""

FAIL = """#!/bin/sh
echo "about to fail" >&2
exit 3
"""

BLOB = b"\xff\xfe\x00binary"


def chatty_lab(dest: Path) -> Path:
    lab = LabWriter(git_hash="c4a77e00" * 5)
    run = lab.run("chatter")
    run.job("talk", TALK, params={"label": 'say "hi"', "n": 3}, outputs={"blob": "$out/blob.bin", "dir": "$out/dir"})
    run.job("fail", FAIL, outputs={"never": "$out/never.txt"})
    return lab.write(dest)


# ---- fixtures: the Labs are built and run once per module ------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inspect")


@pytest.fixture(scope="module")
def cli(home) -> Cli:
    return Cli(home / "home")


@pytest.fixture(scope="module")
def simple_lab(home) -> Path:
    return example_labs().build("simple", home / "simple")


@pytest.fixture(scope="module")
def sweep_lab(home) -> Path:
    return example_labs().build("sweep-scatter", home / "sweep-scatter")


@pytest.fixture(scope="module")
def simple(cli, home, simple_lab) -> RunLab:
    """The simple example after `repxctl run @all`."""
    return run_lab(cli, simple_lab, home / "base", "@all")


@pytest.fixture(scope="module")
def fresh(cli, home, simple_lab) -> RunLab:
    """The simple example against a base path where nothing has run."""
    return RunLab(cli, simple_lab.resolve(), home / "empty-base")


@pytest.fixture(scope="module")
def sweep(cli, home, sweep_lab) -> RunLab:
    """The sweep-scatter example after `repxctl run sweep`."""
    return run_lab(cli, sweep_lab, home / "sweep-base", "sweep")


@pytest.fixture(scope="module")
def chatty(cli, home) -> RunLab:
    """The chatty Lab after a run in which `fail` fails (exit 1)."""
    return run_lab(cli, chatty_lab(home / "chatty"), home / "chatty-base", "chatter", "--continue-on-failure", code=1)


@pytest.fixture(scope="module")
def gc_template(cli, home, simple_lab, sweep_lab) -> tuple[RunLab, RunLab]:
    base = home / "gc-template"
    return run_lab(cli, simple_lab, base, "@all"), run_lab(cli, sweep_lab, base, "sweep")


@pytest.fixture
def scratch(gc_template, tmp_path) -> tuple[RunLab, RunLab]:
    """simple and sweep-scatter run under one base path: a copy of its own for each test (gc
    deletes outputs; the log tests edit them)."""
    base = tmp_path / "gc-base"
    shutil.copytree(gc_template[0].base, base, symlinks=True)
    return tuple(replace(setup, base=base) for setup in gc_template)


# ---- list ------------------------------------------------------------------------------------


def test_list_runs_before_and_after_a_run(fresh, simple):
    before_json, after_json, after_plain = fresh.many([["list", "runs", "--json"]]) + simple.many(
        [["list", "runs", "--json"], ["list", "runs"]])
    before = {r["run"]: r for r in json.loads(before_json)}
    assert {r: (v["jobs"], v["succeeded"]) for r, v in before.items()} == {"simulation": (3, 0), "analysis": (1, 0)}
    after = {r["run"]: r for r in json.loads(after_json)}
    assert {r: (v["jobs"], v["succeeded"]) for r, v in after.items()} == {"simulation": (3, 3), "analysis": (1, 1)}
    assert after["analysis"]["depends_on"] == ["simulation"]
    assert after["simulation"]["depends_on"] == []

    rows = {row[0]: row for row in table(after_plain)}
    assert rows["simulation"][:4] == ["simulation", "3", "3", "-"]
    assert rows["analysis"][:4] == ["analysis", "1", "1", "simulation"]


def test_list_groups(simple):
    as_json, plain = simple.many([["list", "groups", "--json"], ["list", "groups"]])
    assert json.loads(as_json) == {"all": ["simulation", "analysis"]}
    assert table(plain) == [["@all", "simulation, analysis"]]


def test_list_jobs_all_succeeded_after_run(simple):
    as_json, plain = simple.many([["list", "jobs", "--json"], ["list", "jobs"]])
    jobs = json.loads(as_json)
    assert len(jobs) == 4
    assert sorted(j["id"] for j in jobs) == sorted(simple.ids)
    assert {j["stage"]: j["run"] for j in jobs} == {
        "produce-1.0": "simulation", "square-1.0": "simulation", "total-1.0": "simulation", "report-1.0": "analysis"}
    assert {j["status"] for j in jobs} == {"Succeeded"}
    assert next(j for j in jobs if j["stage"] == "produce-1.0")["params"] == {"offset": 1}

    rows = table(plain)
    assert sorted(r[0] for r in rows) == sorted(simple.ids)
    assert {r[3] for r in rows} == {"Succeeded"}


def test_list_jobs_before_a_run(fresh):
    all_jobs, succeeded = fresh.many([["list", "jobs", "--json"], ["list", "jobs", "--status", "Succeeded"]])
    status = {j["stage"]: j["status"] for j in json.loads(all_jobs)}
    assert status["produce-1.0"] == "Pending"  # no dependencies: ready to run
    assert status["square-1.0"] == status["total-1.0"] == "Blocked"
    assert succeeded.strip() == "(none)"


def test_list_jobs_filters(simple):
    filters = {
        ("--run", "simulation", "--stage", "square"): [simple.job("square")],
        ("--status", "blocked"): [],
        ("--status", "SUCCEEDED", "--run", "analysis"): [simple.job("report")],
        ("--param", "offset=1"): [simple.job("produce")],
    }
    outputs = simple.many([["list", "jobs", "--json", *f] for f in filters])
    for (args, expected), out in zip(filters.items(), outputs, strict=True):
        assert sorted(j["id"] for j in json.loads(out)) == sorted(expected), args


def test_list_jobs_on_a_sweep(sweep):
    all_jobs, seed2, both, plain = sweep.many([
        ["list", "jobs", "--json"],
        ["list", "jobs", "--json", "--param", "seed=2"],
        ["list", "jobs", "--json", "--param", "seed=2", "--param", "size=4"],
        ["list", "jobs", "--param", "seed=3", "--stage", "generate"],
    ])
    jobs = json.loads(all_jobs)
    assert len(jobs) == 7
    assert {j["status"] for j in jobs} == {"Succeeded"}
    seed2 = json.loads(seed2)
    assert sorted(j["stage"] for j in seed2) == ["generate-1.0", "partition-1.0"]
    assert all(j["params"]["seed"] == 2 for j in seed2)
    assert [j["id"] for j in json.loads(both)] == [sweep.job("generate", seed=2)]
    assert {j["stage_type"] for j in jobs if j["stage"] == "partition-1.0"} == {"scatter-gather"}
    assert table(plain) == [[sweep.job("generate", seed=3), "sweep", "generate-1.0", "Succeeded", '{"seed":3,"size":4}']]


def test_list_deps(simple, sweep):
    produce, square, total = (simple.job(s) for s in ("produce", "square", "total"))
    square_json, plain = simple.many([["list", "deps", simple.prefix(square), "--json"], ["list", "deps", simple.prefix(square)]])
    assert json.loads(square_json) == {"job": square, "dependencies": [produce], "dependents": [total], "after_runs": {}}
    first, rest = plain.split("\n", 1)
    assert first == square
    assert table(rest) == [["depends on", produce, "Succeeded"], ["needed by", total, "Succeeded"]]

    collect, generate = sweep.many([["list", "deps", sweep.job("collect")[:6], "--json"],
                                    ["list", "deps", sweep.job("generate", seed=1), "--json"]])
    assert sorted(json.loads(collect)["dependencies"]) == sorted(sweep.job("partition", seed=s) for s in (1, 2, 3))
    assert json.loads(collect)["dependents"] == []
    assert json.loads(generate)["dependents"] == [sweep.job("partition", seed=1)]


# ---- show ------------------------------------------------------------------------------------


def test_show_job_after_run(simple):
    produce, square = simple.job("produce"), simple.job("square")
    square_json, produce_json, report_json, plain = simple.many([
        ["show", "job", simple.prefix(square), "--json"], ["show", "job", produce, "--json"],
        ["show", "job", simple.job("report"), "--json"], ["show", "job", produce]])
    record = json.loads(square_json)
    assert (record["id"], record["run"], record["status"]) == (square, "simulation", "Succeeded")
    assert record["params"] == {}
    assert record["dependencies"] == [produce]
    assert list(record["inputs"]) == ["numbers"]
    numbers = Path(record["inputs"]["numbers"])
    assert numbers.is_file() and numbers.is_relative_to(simple.base / "outputs" / produce)
    assert Path(record["outputs"]["squares"]).is_file()
    assert Path(record["output_dir"]) == simple.base / "outputs" / square

    produced = json.loads(produce_json)
    assert produced["params"] == {"offset": 1}
    assert produced["inputs"] == {}
    assert produced["resource_hints"]["mem"] == "64M"

    report = json.loads(report_json)
    assert report["run"] == "analysis"
    assert Path(report["inputs"]["store__base"]) == simple.base
    assert Path(report["inputs"]["metadata__simulation"]).is_file()

    assert f"id: {produce}" in plain and "status: Succeeded" in plain and "  offset: 1" in plain


def test_show_job_of_a_scatter_gather_stage(sweep):
    record = sweep.json("show", "job", sweep.job("partition", seed=2))
    assert record["stage_type"] == "scatter-gather"
    assert record["params"] == {"seed": 2, "shift": 10}
    assert record["dependencies"] == [sweep.job("generate", seed=2)]
    assert Path(record["inputs"]["data"]).is_file()
    assert Path(record["outputs"]["sum"]).is_file()
    assert {"scatter", "gather", "step-square", "step-shift"} <= set(record["executables"])


def test_show_output_paths_and_content(simple):
    total = simple.job("total")
    path, cat, squares, as_json, plain, report = simple.many([
        ["show", "output", simple.prefix(total), "total"],
        ["show", "output", total, "total", "--cat"],
        ["show", "output", simple.job("square"), "squares", "--cat"],
        ["show", "output", total, "--json"],
        ["show", "output", total],
        ["show", "output", simple.job("report"), "report", "--cat"],
    ])
    path = path.strip()
    assert Path(path) == simple.base / "outputs" / total / "out" / "total.txt"
    assert Path(path).is_file()
    assert cat == "90\n"  # produce writes 2..6, square squares them: 4+9+16+25+36
    assert squares.split() == ["4", "9", "16", "25", "36"]
    assert json.loads(as_json) == {"total": path}
    assert table(plain) == [["total", path, "yes"]]
    assert report.splitlines() == ["simulation jobs: 3", "90"]


def test_show_output_unknown_key(simple):
    line = simple.error("show", "output", simple.job("total"), "nope")
    assert "'nope'" in line and "it has: total" in line


def test_show_before_the_job_ran(fresh):
    record, plain = fresh.many([["show", "job", fresh.job("total"), "--json"], ["show", "output", fresh.job("total")]])
    record = json.loads(record)
    assert record["status"] == "Blocked"
    assert not Path(record["outputs"]["total"]).exists()
    assert table(plain)[0][2] == "no"
    line = fresh.error("show", "output", fresh.job("total"), "total", "--cat")
    assert "does not exist yet" in line and "Blocked" in line


def test_show_output_cat_prints_bytes_and_refuses_directories(chatty):
    talk = chatty.job("talk")
    assert chatty("show", "output", talk, "blob", "--cat", text=False).stdout == BLOB
    assert "is a directory" in chatty.error("show", "output", talk, "dir", "--cat")
    line = chatty.error("show", "output", chatty.job("fail"), "never", "--cat")
    assert "does not exist yet" in line and "Failed" in line


def test_failed_job_status(chatty):
    all_jobs, failed, quoted = chatty.many([
        ["list", "jobs", "--json"], ["list", "jobs", "--status", "failed", "--json"],
        ["list", "jobs", "--param", 'label=say "hi"', "--json"]])
    assert {j["stage"]: j["status"] for j in json.loads(all_jobs)} == {"talk-1.0": "Succeeded", "fail-1.0": "Failed"}
    assert [j["id"] for j in json.loads(failed)] == [chatty.job("fail")]
    assert [j["id"] for j in json.loads(quoted)] == [chatty.job("talk")]


# ---- log -------------------------------------------------------------------------------------


def test_log_of_the_simple_example(simple):
    produce = simple.job("produce")
    repx = simple.base / "outputs" / produce / "repx"
    out, err = simple.many([["log", simple.prefix(produce)], ["log", produce, "--stderr"]])
    assert out == (repx / "stdout.log").read_text()
    assert err == (repx / "stderr.log").read_text()


def test_log_stdout_stderr_and_follow(chatty):
    talk, fail = chatty.job("talk"), chatty.job("fail")
    out, err, follow, failed = chatty.many([
        ["log", talk], ["log", talk, "--stderr"],
        ["log", talk, "-f"],  # a finished job: print the log and return
        ["log", fail, "--stderr", "--follow"],
    ])
    assert out == follow == "hello from stdout\n"
    assert err == "warning on stderr\n"
    assert "about to fail" in failed and "exited with status 3" in failed


def test_log_of_a_job_that_never_ran(fresh):
    assert "has no log yet" in fresh.error("log", fresh.job("produce"))


def test_log_follow_returns_for_a_finished_job_without_log(scratch):
    simple, _ = scratch
    produce = simple.job("produce")
    (simple.base / "outputs" / produce / "repx" / "stdout.log").unlink()
    assert simple("log", produce, "-f", timeout=20).stdout == ""


def test_log_follow_restarts_when_the_job_runs_again(scratch):
    """`log -f` on a job that is started again (its log truncated) prints the new log and returns."""
    simple, _ = scratch
    produce = simple.job("produce")
    repx = simple.base / "outputs" / produce / "repx"
    (repx / "SUCCESS").unlink()
    (repx / "stdout.log").write_text("old output of an earlier, longer attempt\n")
    follow = subprocess.Popen([*repxctl_command(), "log", produce, "-f", *simple.opts], cwd=simple.cli.home,
                              env=simple.cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout.readline() == "old output of an earlier, longer attempt\n"
        (repx / "stdout.log").write_text("new\n")
        (repx / "SUCCESS").write_text("")
        out, err = follow.communicate(timeout=20)
    finally:
        follow.kill()
    assert "Traceback" not in err
    assert (follow.returncode, out) == (0, "new\n")


# ---- trace-params ----------------------------------------------------------------------------


def test_trace_params_own_and_inherited(sweep):
    partition, generate = sweep.job("partition", seed=2), sweep.job("generate", seed=2)
    as_json, plain = sweep.many([["trace-params", sweep.prefix(partition), "--json"], ["trace-params", partition]])
    assert json.loads(as_json) == {
        "seed": {"value": 2, "from": partition},  # generate has a seed too: own wins
        "shift": {"value": 10, "from": partition},
        "size": {"value": 4, "from": generate},
    }
    first, rest = plain.split("\n", 1)
    assert first == partition
    assert table(rest) == [["seed", "2", "(own)"], ["shift", "10", "(own)"], ["size", "4", generate]]


def test_trace_params_on_the_simple_example(simple):
    total, report = simple.many([["trace-params", simple.job("total"), "--json"],
                                 ["trace-params", simple.job("report"), "--json"]])
    assert json.loads(total) == {"offset": {"value": 1, "from": simple.job("produce")}}
    assert json.loads(report) == {}


def test_sweep_results_match_the_parameters(sweep):
    """What a user checks after a sweep: each partition's sum, and the collected summary."""
    sums = {seed: sum(((seed * 7919 + i * 104729) % 1000) ** 2 + 10 for i in range(1, 5)) for seed in (1, 2, 3)}
    *partials, summary = sweep.many([
        *(["show", "output", sweep.job("partition", seed=seed), "sum", "--cat"] for seed in (1, 2, 3)),
        ["show", "output", sweep.job("collect"), "summary", "--cat"],
    ])
    assert [int(out) for out in partials] == [sums[1], sums[2], sums[3]]
    assert summary.splitlines() == [f"sum_{s} {sums[s]}" for s in (1, 2, 3)]


# ---- viz -------------------------------------------------------------------------------------


def test_viz_dot_to_stdout(simple, sweep, tmp_path):
    dot, selection = simple.many([["viz"], ["viz", simple.job("total"), "-o", tmp_path / "total.dot"]])
    assert dot.startswith("digraph")
    assert all(f'"{job_id}"' in dot for job_id in simple.ids)
    assert f'"{simple.job("produce")}" -> "{simple.job("square")}"' in dot
    assert all(f'"{job_id}"' in sweep("viz").stdout for job_id in sweep.ids)
    # a selection draws its closure only: no run edge to the analysis job it does not contain
    selection = (tmp_path / "total.dot").read_text()
    assert all(simple.job(s) in selection for s in ("produce", "square", "total"))
    assert simple.job("report") not in selection


@pytest.mark.integration
def test_viz_svg_and_png(simple, chatty, tmp_path):
    require_program("dot")
    svg, png, explicit, quoted = (tmp_path / name for name in ("lab.svg", "lab.png", "lab.out", "chatty.svg"))
    simple.many([["viz", "-o", svg], ["viz", "-o", png], ["viz", "--format", "svg", "-o", explicit]])
    chatty("viz", "-o", quoted)  # the param value 'say "hi"' must not break the dot syntax
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    titles = {el.text for el in ElementTree.parse(svg).iter("{http://www.w3.org/2000/svg}title")}
    assert set(simple.ids) <= titles
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in explicit.read_text()
    assert "say &quot;hi&quot;" in quoted.read_text()


def test_viz_errors(simple, tmp_path):
    png, pdf, unwritable = simple.cli.many([
        ["viz", "--format", "png", *simple.opts],
        ["viz", "-o", tmp_path / "graph.pdf", *simple.opts],
        ["viz", "-o", tmp_path / "no" / "such" / "dir.dot", *simple.opts],
    ], code=2)
    assert "pass -o" in one_line_error(png)
    assert "suffix" in one_line_error(pdf)
    assert not (tmp_path / "graph.pdf").exists()
    assert "cannot write" in one_line_error(unwritable)


# ---- gc --------------------------------------------------------------------------------------


def test_gc_roots_and_dry_run(scratch):
    simple, sweep = scratch
    cli, base = simple.cli, ["--base-path", simple.base]
    stray = simple.base / "outputs" / "stray-output"
    stray.mkdir()
    everything = output_dirs(simple.base)
    assert len(everything) == 4 + 7 + 1

    roots_json, roots_plain, dry = (p.stdout for p in cli.many([
        ["gc", "--roots", "--json", *base], ["gc", "--roots", *base], ["gc", "--dry-run", *base]]))
    roots = {Path(r["lab"]).resolve(): r for r in json.loads(roots_json)}
    assert sorted(roots) == sorted([simple.lab, sweep.lab])
    assert sorted(roots[simple.lab]["jobs"]) == sorted(simple.ids)
    assert sorted(roots[sweep.lab]["jobs"]) == sorted(sweep.ids)
    simple_id = roots[simple.lab]["lab_id"]
    assert simple_id in roots_plain
    assert dry.splitlines() == [f"would delete {stray}"]
    assert output_dirs(simple.base) == everything

    # previewing a dropped root lists that Lab's outputs too, and forgets and deletes nothing
    preview = cli.json("gc", "--dry-run", "--drop-root", simple_id[:8], *base)
    assert preview["dry_run"] is True and preview["bytes_freed"] == 0
    assert sorted(preview["deleted"]) == sorted([stray.name, *simple.ids])
    assert len(cli.json("gc", "--roots", *base)) == 2
    assert output_dirs(simple.base) == everything


def test_gc_drop_root_deletes_that_labs_outputs_only(scratch):
    simple, sweep = scratch
    cli, base = simple.cli, ["--base-path", simple.base]
    roots = {Path(r["lab"]).resolve(): r["lab_id"] for r in cli.json("gc", "--roots", *base)}

    result = cli.json("gc", "--drop-root", roots[simple.lab], *base)
    assert result["dry_run"] is False and result["bytes_freed"] > 0
    assert sorted(result["deleted"]) == sorted(simple.ids)
    assert output_dirs(simple.base) == set(sweep.ids)

    left, simple_jobs, sweep_jobs = (p.stdout for p in cli.many([
        ["gc", "--roots", "--json", *base], ["list", "jobs", "--json", *simple.opts], ["list", "jobs", "--json", *sweep.opts]]))
    assert [r["lab_id"] for r in json.loads(left)] == [roots[sweep.lab]]
    # the deleted jobs are not Succeeded any more; the other Lab's still are
    assert {j["stage"]: j["status"] for j in json.loads(simple_jobs)} == {
        "produce-1.0": "Pending", "square-1.0": "Blocked", "total-1.0": "Blocked", "report-1.0": "Pending"}
    assert {j["status"] for j in json.loads(sweep_jobs)} == {"Succeeded"}


def test_gc_refuses_unknown_or_empty_roots(scratch):
    simple, _ = scratch
    base = ["--base-path", simple.base]
    before = output_dirs(simple.base)
    unknown, empty = simple.cli.many([
        ["gc", "--drop-root", "not-a-lab", "--dry-run", *base],
        ["gc", "--drop-root", "", *base],  # "" (an unset shell variable) must not match every root
    ], code=2)
    for proc in (unknown, empty):
        assert "no root" in one_line_error(proc)
    assert len(simple.cli.json("gc", "--roots", *base)) == 2
    assert output_dirs(simple.base) == before


# ---- errors ----------------------------------------------------------------------------------


def test_ambiguous_job_prefix_lists_candidates(simple, sweep):
    commands = [(simple, [["show", "job"], ["log"]]), (sweep, [["trace-params"], ["list", "deps", "--json"]])]
    for setup, cmds in commands:
        prefix, matches = ambiguous_prefix(setup.ids)
        for proc in setup.cli.many([[cmd[0], *cmd[1:2], prefix, *cmd[2:], *setup.opts] for cmd in cmds], code=2):
            assert "ambiguous" in proc.stderr and f"matches {len(matches)} jobs" in proc.stderr
            assert all(m in proc.stderr for m in matches), proc.stderr
            assert proc.stdout == ""


def test_unknown_job_and_run(simple):
    run, job, spec = simple.cli.many([
        ["list", "jobs", "--run", "nope", *simple.opts], ["show", "job", "zzz", *simple.opts], ["viz", "nope", *simple.opts]], code=2)
    line = one_line_error(run)
    assert "unknown run 'nope'" in line and "analysis, simulation" in line
    assert "no job id starts with 'zzz'" in one_line_error(job)
    assert "'nope'" in one_line_error(spec)


def test_bad_filter_values_are_usage_errors(simple):
    param, status = simple.cli.many([
        ["list", "jobs", "--param", "=1", *simple.opts], ["list", "jobs", "--status", "bogus", *simple.opts]], code=2)
    assert "KEY=VALUE" in param.stderr  # a bare KEY is upstream's column (test_cli_upstream.py); no KEY is an error
    assert "--status" in status.stderr


def test_missing_or_wrong_lab_is_one_line(cli, tmp_path):
    commands = [["list", "jobs"], ["show", "output", "0"], ["log", "0"], ["trace-params", "0"], ["viz"]]
    for command, proc in zip(commands, cli.many(commands, code=2), strict=True):
        assert "--lab" in one_line_error(proc), command
    missing, not_a_lab = cli.many([["list", "jobs", "--lab", tmp_path / "nothing-here"], ["list", "groups", "--lab", tmp_path]], code=2)
    assert "not found" in one_line_error(missing)
    assert "not a Lab" in one_line_error(not_a_lab)
