"""Shell completion of run names, @groups and job ids (issue 15): asked as bash asks it, through
the real repxctl with `_REPXCTL_COMPLETE=bash_complete`, from the Lab of -l/--lab, $REPX_LAB or ./result."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from repxd.lab.writer import LabWriter


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Runs `prep` and `train` (group @models = [train]); job ids by stage name."""
    writer = LabWriter()
    prep = writer.run("prep")
    made = prep.job("make", "#!/bin/sh\necho x > \"$1/x\"\n", outputs={"x": "$out/x"})
    train = writer.run("train")
    fit = train.job("fit", "#!/bin/sh\ncat \"$2\" > \"$1/y\"\n", inputs={"x": made.output("x")}, outputs={"y": "$out/y"})
    writer.group("models", [train])
    return writer.write(tmp_path_factory.mktemp("lab") / "lab"), {"make": made.id, "fit": fit.id}


def complete(line: str, cwd: Path, **env: str) -> tuple[list[str], str]:
    """The candidates bash would offer for the last word of `line` (a trailing space: a new word)."""
    words = shlex.split(line)
    cword = len(words) if line.endswith(" ") else len(words) - 1
    environ = {k: v for k, v in os.environ.items() if k not in ("REPX_LAB", "REPX_API")}
    environ |= {"_REPXCTL_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword), **env}
    proc = subprocess.run([shutil.which("repxctl")], capture_output=True, text=True, env=environ, cwd=cwd, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [row.split(",", 1)[1] for row in proc.stdout.splitlines() if row], proc.stderr


def test_run_completes_run_names_and_groups_from_the_global_lab(lab, tmp_path):
    path, _ = lab
    candidates, stderr = complete(f"repxctl -l {path} run ", tmp_path)
    assert candidates == ["@models", "prep", "train"] and stderr == ""
    assert complete(f"repxctl -l {path} run @", tmp_path)[0] == ["@models"]
    assert complete(f"repxctl run --lab {path} t", tmp_path)[0] == ["train"]


def test_run_offers_job_ids_when_no_run_name_fits(lab, tmp_path):
    path, jobs = lab
    prefix = jobs["fit"][:3]
    candidates, _ = complete(f"repxctl run --lab {path} {prefix}", tmp_path)
    assert jobs["fit"] in candidates and all(c.startswith(prefix) for c in candidates)


def test_show_job_and_log_complete_job_ids_from_repx_lab(lab, tmp_path):
    path, jobs = lab
    for command in ("show job", "log", "debug-run", "list dependencies"):
        assert complete(f"repxctl {command} ", tmp_path, REPX_LAB=str(path))[0] == sorted(jobs.values()), command
    assert complete(f"repxctl log {jobs['make'][:4]}", tmp_path, REPX_LAB=str(path))[0] == \
        [j for j in sorted(jobs.values()) if j.startswith(jobs["make"][:4])]


def test_the_lab_in_dot_result_is_read(lab, tmp_path):
    path, _ = lab
    (tmp_path / "result").symlink_to(path)
    assert complete("repxctl list jobs ", tmp_path)[0] == ["prep", "train"]


def test_without_a_readable_lab_completion_is_empty_and_silent(lab, tmp_path):
    _, jobs = lab
    for env in ({}, {"REPX_LAB": str(tmp_path / "missing")}):
        assert complete("repxctl log ", tmp_path, **env) == ([], "")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lab").mkdir()
    (broken / "lab" / "x-lab-metadata.json").write_text("{not json")
    assert complete(f"repxctl run --lab {broken} ", tmp_path) == ([], "")


def test_completion_is_quick(lab, tmp_path):
    path, _ = lab
    started = time.monotonic()
    complete(f"repxctl -l {path} run ", tmp_path)
    # Interactive: under three seconds even on this shared 2-core CI machine (typically ~0.5 s).
    assert time.monotonic() - started < 3.0
