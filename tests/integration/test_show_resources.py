"""`repxctl show job JOB --resources`: the merged resources of a job and where each value came from,
in upstream's order (repx-client resources.rs resolve_for_job: defaults, Lab hints, matching rules)."""

from __future__ import annotations

import os
from pathlib import Path

from cli import repxctl

from repxd.lab.writer import LabWriter


def test_show_job_resources_names_each_source(tmp_path: Path) -> None:
    writer = LabWriter()
    fit = writer.run("sim").job("fit", "#!/bin/sh\ntouch \"$1/x\"\n", outputs={"x": "$out/x"},
                          resources={"mem": "2G", "cpus": 2})
    lab = writer.write(tmp_path / "lab")
    config = tmp_path / "config" / "repx"
    config.mkdir(parents=True)
    (config / "resources.toml").write_text('[defaults]\nmem = "1G"\ntime = "00:10:00"\n'
                                           '[[rules]]\njob_id_glob = "*-fit-*"\ntime = "02:00:00"\n')
    extra = tmp_path / "extra.toml"
    extra.write_text('[defaults]\npartition = "small"\n')
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("REPX_LAB", None)
    args = ("show", "job", fit.id, "--lab", lab, "--base-path", tmp_path / "base", "--resources")
    shown = repxctl(*args, "--resources-file", extra, "--json", env=env, cwd=tmp_path)
    assert shown.code == 0, shown.stderr
    record = shown.json()
    assert record["job"] == fit.id and record["target"] == "local"
    assert record["resources"] == {
        "mem": {"value": "2G", "source": "lab hint"},
        "time": {"value": "02:00:00", "source": f"rule 1 of {config / 'resources.toml'}"},
        "cpus-per-task": {"value": 2, "source": "lab hint"},
        "partition": {"value": "small", "source": f"default ({extra})"},
    }
    text = repxctl(*args, env=env, cwd=tmp_path)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"resources of {record['job']} on target local:"
    assert lines[1].split() == ["key", "value", "source"]
    assert lines[2].split() == ["mem", "2G", "lab", "hint"]
    assert lines[3].split() == ["time", "02:00:00", "rule", "1", "of", str(config / "resources.toml")]
    assert len(lines) == 5  # no --resources-file: no partition
