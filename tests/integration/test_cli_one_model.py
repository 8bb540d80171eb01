"""One command family for both modes (issue 15): the same Lab run embedded and through
`repxd all` lists, shows and logs alike, and a daemon run is found without --lab or --base-path
(before, `list jobs --lab X` after a daemon run read the embedded base path: every job Pending)."""

from __future__ import annotations

import os
import re
import time

from cli import repxctl
from test_cli_daemon_run import failing_lab, slow_lab


def test_the_same_lab_embedded_and_through_the_daemon(daemon, tmp_path):
    lab, bad = failing_lab(tmp_path / "lab")
    work = tmp_path / "work"  # no ./result here: no Lab unless one is named
    work.mkdir()
    alone = {k: v for k, v in os.environ.items() if k not in ("REPX_API", "REPX_LAB")}
    alone |= {"XDG_RUNTIME_DIR": str(tmp_path / "no-daemon"), "XDG_STATE_HOME": str(tmp_path / "state")}
    served = daemon.env | {"REPX_API": str(daemon.socket)}
    served.pop("REPX_LAB", None)
    embedded_base = ["--base-path", tmp_path / "embedded"]

    embedded = repxctl("run", "chain", "--lab", lab, *embedded_base, "--embedded", env=alone, cwd=work)
    through = repxctl("run", "chain", "--lab", lab, env=served, cwd=work)
    assert embedded.code == through.code == 1, (embedded.stderr, through.stderr)
    for result in (embedded, through):
        assert re.search(rf"FAIL +{bad}: exited with status 3", result.stdout), result.stdout
        assert "1 succeeded, 1 failed, 1 blocked" in result.stderr, result.stderr

    listed_embedded = repxctl("list", "jobs", "--lab", lab, *embedded_base, env=alone, cwd=work)
    listed_with_lab = repxctl("list", "jobs", "--lab", lab, env=served, cwd=work)
    listed_without_lab = repxctl("list", "jobs", env=served, cwd=work)
    assert listed_embedded.stdout == listed_with_lab.stdout == listed_without_lab.stdout
    assert "showing daemon run" in listed_without_lab.stderr and str(daemon.base) in listed_without_lab.stderr
    as_json = repxctl("list", "jobs", "--json", env=served, cwd=work).json()
    assert {job["stage"]: job["status"] for job in as_json} == {"ok-1.0": "Succeeded", "bad-1.0": "Failed", "after-1.0": "Blocked"}
    assert as_json == repxctl("list", "jobs", "--json", "--lab", lab, *embedded_base, env=alone, cwd=work).json()

    runs = [repxctl("list", "runs", *extra, env=env, cwd=work).stdout
            for extra, env in ((["--lab", lab, *embedded_base], alone), ([], served))]
    assert runs[0] == runs[1]

    shown = {name: repxctl("show", "job", bad, "--json", *extra, env=env, cwd=work).json()
             for name, extra, env in (("embedded", ["--lab", lab, *embedded_base], alone), ("daemon", [], served))}
    assert shown["embedded"]["status"] == shown["daemon"]["status"] == "Failed"
    assert shown["daemon"]["output_dir"].startswith(str(daemon.base))
    assert {k: v for k, v in shown["embedded"].items() if k not in ("output_dir", "inputs", "outputs")} == \
        {k: v for k, v in shown["daemon"].items() if k not in ("output_dir", "inputs", "outputs")}

    logs = [repxctl("log", bad, "--stderr", *extra, env=env, cwd=work)
            for extra, env in ((["--lab", lab, *embedded_base], alone), ([], served), (["--lab", lab], served))]
    assert [log.code for log in logs] == [0, 0, 0], [log.stderr for log in logs]
    assert logs[0].stdout == logs[1].stdout == logs[2].stdout
    assert logs[0].stdout.startswith("broken\n") and "exited with status 3" in logs[0].stdout


def test_without_a_daemon_or_lab_the_error_says_what_to_give(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REPX_API", "REPX_LAB")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    result = repxctl("list", "jobs", env=env, cwd=tmp_path)
    assert result.code == 2 and "--lab" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_running_daemon_job_is_listed_as_running(daemon, tmp_path):
    lab = slow_lab(tmp_path / "lab")
    served = daemon.env | {"REPX_API": str(daemon.socket)}
    run_id = repxctl("run", "slow", "--lab", lab, "--detach", env=served).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while repxctl("jobs", "--run", run_id, "--state", "running", "--json", env=served).json() == []:
            assert time.monotonic() < deadline, daemon.logs()
            time.sleep(0.2)
        listed = repxctl("list", "jobs", "--json", "--lab", lab, env=served, cwd=tmp_path).json()
        assert [job["status"] for job in listed] == ["Running"]
    finally:
        repxctl("cancel", run_id, env=served)


def test_a_given_daemon_address_that_does_not_answer_is_said(tmp_path):
    lab, _ = failing_lab(tmp_path / "lab")
    env = {k: v for k, v in os.environ.items() if k != "REPX_LAB"} | {"REPX_API": str(tmp_path / "gone.sock")}
    without_lab = repxctl("list", "jobs", env=env, cwd=tmp_path)
    assert without_lab.code == 2 and f"no repx daemon answers at {tmp_path / 'gone.sock'}" in without_lab.stderr
    with_lab = repxctl("list", "jobs", "--lab", lab, env=env, cwd=tmp_path)
    assert with_lab.code == 0 and "warning: no repx daemon answers at" in with_lab.stderr
