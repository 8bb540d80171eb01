"""One command family for both modes (issue 15), beyond the failing Lab of test_cli_one_model:
a Lab that succeeds and a run stopped with Ctrl-C read back alike embedded and through `repxd all`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cli import repxctl
from test_cli_daemon_run import interrupt_run, slow_lab, wait_done

from repxd.lab.writer import LabWriter


def succeeding_lab(dest: Path) -> tuple[Path, str, str]:
    """first -> second, both succeed; the ids of `first` and `second` (which reads first's output)."""
    writer = LabWriter()
    run = writer.run("pair")
    first = run.job("first", "#!/bin/sh\necho made > \"$1/x\"\necho first-says-hi\n", outputs={"x": "$out/x"})
    second = run.job("second", "#!/bin/sh\necho second-says-hi >&2\ncat \"$2\" > \"$1/y\"\n",
                     inputs={"x": first.output("x")}, outputs={"y": "$out/y"})
    return writer.write(dest), first.id, second.id


def two_modes(tmp_path: Path, daemon) -> tuple[tuple[list, dict], tuple[list, dict], Path]:
    """(extra args, env) for the embedded mode and for the daemon, and a directory with no ./result."""
    work = tmp_path / "work"
    work.mkdir()
    alone = {k: v for k, v in os.environ.items() if k not in ("REPX_API", "REPX_LAB")}
    alone |= {"XDG_RUNTIME_DIR": str(tmp_path / "no-daemon"), "XDG_STATE_HOME": str(tmp_path / "state")}
    served = daemon.env | {"REPX_API": str(daemon.socket)}
    served.pop("REPX_LAB", None)
    return (["--base-path", tmp_path / "embedded"], alone), ([], served), work


def without_seconds(line: str) -> str:
    return re.sub(r"Done in [0-9.]+s", "Done in Ns", line)


def test_a_succeeding_lab_reads_the_same_in_both_modes(daemon, tmp_path):
    lab, first, second = succeeding_lab(tmp_path / "lab")
    (embedded_args, alone), (_, served), work = two_modes(tmp_path, daemon)

    embedded = repxctl("run", "pair", "--lab", lab, *embedded_args, "--embedded", env=alone, cwd=work)
    through = repxctl("run", "pair", "--lab", lab, env=served, cwd=work)
    assert embedded.code == through.code == 0, (embedded.stderr, through.stderr, daemon.logs())
    summaries = [without_seconds(result.stderr.strip().splitlines()[-1]) for result in (embedded, through)]
    assert summaries[0] == summaries[1] == "Done in Ns: 2 succeeded, 0 failed.", summaries

    modes = (("embedded", ["--lab", lab, *embedded_args], alone), ("daemon", [], served))
    listed = {name: repxctl("list", "jobs", *extra, env=env, cwd=work) for name, extra, env in modes}
    assert listed["embedded"].stdout == listed["daemon"].stdout
    as_json = {name: repxctl("list", "jobs", "--json", *extra, env=env, cwd=work).json() for name, extra, env in modes}
    assert as_json["embedded"] == as_json["daemon"]
    assert {job["stage"]: job["status"] for job in as_json["daemon"]} == {"first-1.0": "Succeeded", "second-1.0": "Succeeded"}

    shown = {name: repxctl("show", "job", second, "--json", *extra, env=env, cwd=work).json() for name, extra, env in modes}
    assert shown["embedded"]["status"] == shown["daemon"]["status"] == "Succeeded"
    assert shown["daemon"]["output_dir"].startswith(str(daemon.base))
    assert shown["embedded"]["output_dir"].startswith(str(tmp_path / "embedded"))
    place_bound = ("output_dir", "inputs", "outputs")
    assert {k: v for k, v in shown["embedded"].items() if k not in place_bound} == \
        {k: v for k, v in shown["daemon"].items() if k not in place_bound}

    for job, stream, text in ((second, ["--stderr"], "second-says-hi\n"), (first, [], "first-says-hi\n")):
        logs = [repxctl("log", job, *stream, *extra, env=env, cwd=work) for _, extra, env in modes]
        assert [log.code for log in logs] == [0, 0], [log.stderr for log in logs]
        assert logs[0].stdout == logs[1].stdout == text


def test_ctrl_c_leaves_the_same_stopped_run_in_both_modes(daemon, tmp_path):
    lab = slow_lab(tmp_path / "lab")
    (embedded_args, alone), (_, served), work = two_modes(tmp_path, daemon)
    base = tmp_path / "embedded"

    embedded = interrupt_run(["slow", "--lab", lab, "--embedded", *embedded_args], alone,
                             lambda: any(base.glob("outputs/*/repx/stderr.log")))
    through = interrupt_run(["slow", "--lab", lab], served,
                            lambda: any(j["state"] == "running" for j in repxctl("jobs", "--json", env=served).json()))
    assert embedded.returncode == through.returncode == 130, (embedded.stderr, through.stderr)
    for result in (embedded, through):
        assert result.stderr.strip().splitlines()[-1] == \
            "Cancelled (SIGINT): 0 jobs finished; stopped jobs left no markers.", result.stderr
    (run,) = repxctl("runs", "--json", env=served).json()
    assert wait_done(run["id"], served)["state"] == "cancelled"
    assert not any(base.glob("outputs/*/repx/SUCCESS")) and not any(base.glob("outputs/*/repx/FAIL"))
    assert not any(daemon.base.glob("outputs/*/repx/SUCCESS")) and not any(daemon.base.glob("outputs/*/repx/FAIL"))

    modes = (("embedded", ["--lab", lab, *embedded_args], alone), ("daemon", ["--lab", lab], served))
    as_json = {name: repxctl("list", "jobs", "--json", *extra, env=env, cwd=work).json() for name, extra, env in modes}
    assert [job["status"] for job in as_json["embedded"]] == [job["status"] for job in as_json["daemon"]], as_json
    assert as_json["daemon"][0]["status"] not in ("Running", "Succeeded", "Failed"), as_json
