"""Upstream `repx` habits in `repxctl`: global -l/-v, `list` arguments and flags, `show output JOB
PATH`, `log -n`, `trace-params` without a job, `gc list|status|pin|unpin|--pinned-only`, `init`,
`completions`, and the analysis API as `repx_py`. Real repxctl processes on example Labs run for real
(helpers and Labs shared with test_cli_inspect.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli_inspect import (
    Cli,
    RunLab,
    chatty_lab,
    example_labs,
    one_line_error,
    output_dirs,
    repxctl_command,
    run_lab,
    table,
)

from repxd.lab.writer import LabWriter


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="module")
def cli(home) -> Cli:
    return Cli(home / "home")


@pytest.fixture(scope="module")
def simple_lab(home) -> Path:
    return example_labs().build("simple", home / "simple")


@pytest.fixture(scope="module")
def simple(cli, home, simple_lab) -> RunLab:
    return run_lab(cli, simple_lab, home / "base", "@all")


@pytest.fixture(scope="module")
def sweep(cli, home) -> RunLab:
    return run_lab(cli, example_labs().build("sweep-scatter", home / "sweep"), home / "sweep-base", "sweep")


@pytest.fixture(scope="module")
def chatty(cli, home) -> RunLab:
    return run_lab(cli, chatty_lab(home / "chatty"), home / "chatty-base", "chatter", "--continue-on-failure", code=1)


# ---- global options, list ----------------------------------------------------------------------


def test_global_lab_and_verbose_before_the_command(simple):
    cli, base = simple.cli, ["--base-path", simple.base]
    per_command = cli.json("list", "jobs", *simple.opts)
    global_lab = json.loads(cli("-l", simple.lab, "-v", "list", "jobs", *base, "--json").stdout)
    assert global_lab == per_command and len(per_command) == 4
    # `repx -l result run …`: the global Lab reaches run too (all of it has succeeded already)
    assert "Nothing to do" in cli("-l", simple.lab, "run", "@all", *base).stdout
    # -l after the command too (upstream's -l is global in clap's sense)
    assert cli.json("list", "jobs", "-l", simple.lab, *base) == per_command
    # a command's own --lab wins over the global one
    assert cli.json("-l", "/nonexistent", "list", "jobs", *simple.opts) == per_command
    # --target before the command, as upstream: the target's base_path is where the outputs are
    config = simple.base.parent / "targets.toml"
    config.write_text(f'default_scheduler = "local"\n[targets.local]\nbase_path = "/nonexistent"\n[targets.there]\nbase_path = "{simple.base}"\n')
    statuses = {j["status"] for j in cli.json("--target", "there", "list", "jobs", "--lab", simple.lab, "--config", config)}
    assert statuses == {"Succeeded"}
    # a job-id prefix names the run that holds it, as upstream
    assert {j["run"] for j in cli.json("list", "jobs", simple.job("report")[:12], *simple.opts)} == {"analysis"}
    # `list` alone lists runs, as upstream
    assert [row[0] for row in table(cli("-l", simple.lab, "list").stdout)] == ["simulation", "analysis"]


def test_list_jobs_upstream_arguments(sweep):
    by_stage = {j["id"]: j["stage"].rsplit("-", 1)[0] for j in sweep.jobs}
    shown, stage_only, grouped, paths = sweep.many([
        ["list", "jobs", "sweep", "-p", "size", "-p", "shift"],
        ["list", "jobs", "swe", "-s", "generate", "--json"],  # a run-name prefix, as upstream
        ["list", "jobs", "@everything", "-g", "--json"],
        ["list", "jobs", "--output-paths", "--json"],
    ])
    rows = table(shown)
    assert shown.splitlines()[0].split() == ["JOB", "RUN", "STAGE", "STATUS", "SIZE", "SHIFT"]
    # -p shows effective values: partition and collect inherit size from generate; shift is partition's own
    expected = {"generate": ["4", "-"], "partition": ["4", "10"], "collect": ["4", "10"]}
    assert {row[0]: row[4:] for row in rows} == {job_id: expected[stage] for job_id, stage in by_stage.items()}
    assert sorted(j["id"] for j in json.loads(stage_only)) == sorted(j for j, s in by_stage.items() if s == "generate")
    stages = [j["stage"] for j in json.loads(grouped)]
    assert stages == sorted(stages) and len(stages) == 7
    assert {j["id"]: j["output_path"] for j in json.loads(paths)} == {j: str(sweep.base / "outputs" / j / "out") for j in by_stage}


def test_repeated_status_is_a_union(chatty):
    talk, fail = chatty.job("talk"), chatty.job("fail")
    union, one = (json.loads(out) for out in chatty.many([
        ["list", "jobs", "--status", "succeeded", "--status", "Failed", "--json"], ["list", "jobs", "--status", "failed", "--json"]]))
    assert sorted(j["id"] for j in union) == sorted([talk, fail])
    assert [j["id"] for j in one] == [fail]


def test_list_runs_groups_and_dependencies_take_upstream_arguments(simple):
    run_jobs, group, deps, dependencies = simple.many([
        ["list", "runs", "simulation", "--json"], ["list", "groups", "all", "--json"],
        ["list", "deps", simple.job("square")], ["list", "dependencies", simple.job("square")]])
    assert sorted(j["id"] for j in json.loads(run_jobs)) == sorted(j["id"] for j in simple.jobs if j["run"] == "simulation")
    assert json.loads(group) == {"all": ["simulation", "analysis"]}
    assert deps == dependencies and simple.job("produce") in deps and simple.job("total") in deps


def test_list_jobs_agrees_with_the_run_summary(cli, home):
    """Run with a failure: each job's status in `list jobs` is what the summary said of it."""
    lab = LabWriter(git_hash="5a5a5a5a" * 5)
    run = lab.run("chain")
    broken = run.job("broken", "#!/bin/sh\nexit 1\n", outputs={"x": "$out/x"})
    after = run.job("after", "#!/bin/sh\ntouch \"$1/y\"\n", inputs={"x": broken.output("x")}, outputs={"y": "$out/y"})
    run.job("last", "#!/bin/sh\ntouch \"$1/z\"\n", inputs={"y": after.output("y")}, outputs={"z": "$out/z"})
    run.job("alone", "#!/bin/sh\ntouch \"$1/w\"\n", params={"n": 1}, outputs={"w": "$out/w"})
    setup = RunLab(cli, lab.write(home / "chain").resolve(), home / "chain-base")
    summary = json.loads(setup("run", "chain", "--json", "--continue-on-failure", code=1).stdout)
    listed = {j["id"]: j["status"] for j in setup.json("list", "jobs")}
    said = {j: "Succeeded" for j in summary["succeeded"]} | {j: "Failed" for j in summary["failed"]} | {
        j: "Blocked" for j in summary["blocked"]}
    assert listed == said and sorted(said.values()) == ["Blocked", "Blocked", "Failed", "Succeeded"]


# ---- show output, log, trace-params ---------------------------------------------------------------


def test_show_output_path_relative_to_out(chatty, simple):
    talk = chatty.job("talk")
    listing = chatty("show", "output", talk, ".").stdout
    assert listing.split() == ["blob.bin", "dir/"]
    raw = chatty.cli("show", "output", talk, "blob.bin", *chatty.opts, text=False).stdout
    assert raw == b"\xff\xfe\x00binary"
    total = simple.job("total")
    by_file, by_key = simple.many([["show", "output", total, "total.txt"], ["show", "output", total, "total", "--cat"]])
    assert by_file == by_key == "90\n"
    escape = simple.error("show", "output", total, "../repx/stdout.log")
    assert "leaves the job's out/" in escape


def test_log_last_lines_and_trace_params_for_every_job(simple, sweep):
    produce = simple.job("produce")
    whole, last = simple.many([["log", produce], ["log", produce, "-n", "1"]])
    assert whole.splitlines()[-1:] == last.splitlines() and len(last.splitlines()) <= 1
    traced = sweep.json("trace-params")
    assert sorted(traced) == sorted(sweep.ids)
    assert {k: v["value"] for k, v in traced[sweep.job("generate", seed=2)].items()} == {"seed": 2, "size": 4}


# ---- gc ----------------------------------------------------------------------------------------


def test_gc_roots_pins_and_pinned_only(cli, home, simple_lab):
    base = home / "gc-base"
    simple = run_lab(cli, simple_lab, base, "@all")
    sweep = run_lab(cli, example_labs().build("sweep-scatter", home / "gc-sweep"), base, "sweep")
    opts = ["--base-path", base]
    auto = [p for p in (base / "gcroots" / "auto").rglob("*") if p.is_file()]
    assert len(auto) == 2 and all(p.parent.parent.name == "auto" for p in auto)

    pinned = cli("-l", simple.lab, "gc", "pin", "--name", "keep", *opts).stdout
    assert "keep" in pinned and (base / "gcroots" / "pinned" / "keep").is_file()
    status = cli("-l", simple.lab, "gc", "status", *opts).stdout
    assert "pinned as keep" in status
    kinds = sorted(r["kind"] for r in cli.json("gc", "list", *opts))
    assert kinds == ["auto", "auto", "pinned"]
    assert [r["name"] for r in cli.json("gc", "list", "--kind", "pinned", *opts)] == ["keep"]

    preview = cli.json("gc", "--pinned-only", "--dry-run", *opts)
    assert sorted(preview["deleted"]) == sorted(sweep.ids)
    assert sorted(preview["artifacts_deleted"]) == sorted(f"jobs/{j}" for j in sweep.ids)
    done = cli.json("gc", "--pinned-only", "-y", *opts)
    assert sorted(done["deleted"]) == sorted(sweep.ids) and done["bytes_freed"] > 0
    assert output_dirs(base) == set(simple.ids)
    assert {p.name for p in (base / "artifacts" / "jobs").iterdir()} == set(simple.ids)
    # the deleted jobs' guards (lock files) went with them; the kept jobs' stay
    assert {p.name.split("%")[0] for p in (base / "cache" / "guards").iterdir()} == set(simple.ids)
    # the swept-away Lab runs again from scratch: its artifacts are placed anew
    sweep("run", "sweep")
    assert output_dirs(base) == set(simple.ids) | set(sweep.ids)

    assert "unpinned keep" in cli("gc", "unpin", "keep", *opts).stdout
    assert "no pinned root named 'keep'" in one_line_error(cli("gc", "unpin", "keep", *opts, code=2))


def test_gc_reads_and_moves_the_earlier_flat_roots(cli, home, simple_lab):
    base = home / "legacy-base"
    simple = run_lab(cli, simple_lab, base, "@all")
    roots = base / "gcroots"
    (record,) = [p for p in roots.rglob("*") if p.is_file()]
    data = json.loads(record.read_text())
    del data["artifacts"]  # as the flat layout wrote it
    shutil.rmtree(roots / "auto")
    (roots / f"{data['lab_id']}.json").write_text(json.dumps(data))
    listed = cli.json("gc", "list", "--base-path", base)
    assert [(r["lab_id"], r["project"]) for r in listed] == [(data["lab_id"], "legacy")]
    result = cli.json("gc", "--base-path", base)
    assert result["deleted"] == [] and result["artifacts_deleted"] == []  # unknown artifacts are kept
    assert output_dirs(base) == set(simple.ids)
    assert [p.parent.name for p in roots.rglob("*") if p.is_file()] == ["legacy"]


# ---- init, completions, usage errors ------------------------------------------------------------


def test_init_writes_a_project_once(cli, tmp_path):
    project = tmp_path / "my-study"
    out = cli("init", project).stdout
    assert "my-study" in out
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert {"flake.nix", "nix/lab.nix", "nix/run.nix", "nix/pipeline.nix", ".gitignore"} <= files
    assert "my-study" in (project / "flake.nix").read_text()
    assert "already exists" in one_line_error(cli("init", project, code=2))
    assert "not usable" in one_line_error(cli("init", tmp_path / "x", "--name", "bad name", code=2))


def test_completions_scripts_and_a_completion(cli):
    for shell in ("bash", "zsh", "fish"):
        assert "_REPXCTL_COMPLETE" in cli("completions", "--shell", shell).stdout
    # what the bash script asks repxctl when the user types `repxctl li<TAB>`
    env = cli.env | {"_REPXCTL_COMPLETE": "bash_complete", "COMP_WORDS": "repxctl li", "COMP_CWORD": "1"}
    done = subprocess.run(repxctl_command(), env=env, capture_output=True, text=True, timeout=60)
    assert "plain,list" in done.stdout.splitlines()


def test_usage_errors_are_one_line(simple):
    for args in (["completions", "--shell", "tcsh"], ["list", "jobs", "--status", "bogus", *simple.opts], ["gc", "list", "--kind", "x"]):
        line = one_line_error(simple.cli(*args, code=2))
        assert "--help" in line


# ---- repx_py ---------------------------------------------------------------------------------------


NOTEBOOK = """
from repx_py import Experiment, LocalCacheResolver
from repx_py.models import JobCollection, JobView

exp = Experiment(lab_path={lab!r}, resolver=LocalCacheResolver({outputs!r}))
print(len(exp.jobs()))
jobs = exp.jobs().filter(name__startswith="partition", param_seed=2)
assert isinstance(jobs, JobCollection) and len(jobs) == 1
job = jobs[0]
assert isinstance(job, JobView)
print(job.effective_params["seed"], job.effective_params["size"])
print(job.get_output_path("sum").read_text().strip())
df = exp.jobs().filter(param_size=4).to_dataframe()
print(len(df), sorted(set(df["name"].str.rsplit("-", n=1).str[0])))
"""


def test_notebook_written_for_upstream_runs_unchanged(sweep):
    pytest.importorskip("pandas")
    script = textwrap.dedent(NOTEBOOK.format(lab=str(sweep.lab), outputs=str(sweep.base / "outputs")))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    count, params, total, frame = done.stdout.splitlines()
    partition = sweep.job("partition", seed=2)
    assert count == "7" and params == "2 4"
    assert total == (sweep.base / "outputs" / partition / "out" / "sum.txt").read_text().strip()
    assert frame == "7 ['collect', 'generate', 'partition']"
