"""The SLURM batch script and sbatch directives, run with a real shell as SLURM would run each
array index (SLURM_ARRAY_TASK_ID set, or unset for a single job)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from repxd.exec.runtimes import Invocation
from repxd.targets.batch import Process, arm, batch_script
from repxd.targets.slurm.script import Directives


def _process(tmp: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
    cwd = tmp / name / "out"
    cwd.mkdir(parents=True)
    return Process(Invocation(argv, env or {"PATH": "/usr/bin:/bin"}, cwd), tmp / name / "stdout.log",
                   tmp / name / "stderr.log", tmp / name / "guard")


def _run(script: str, index: int | None) -> int:
    env = {"PATH": "/usr/bin:/bin", "LEAKED": "from-the-batch-environment"}
    if index is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(index)
    return subprocess.run(["sh", "-c", script], env=env).returncode


def test_each_array_index_runs_its_own_process_with_its_logs_exit_file_and_directory(tmp_path):
    odd = "it's \"quoted\" $HOME `x`"
    processes = [
        _process(tmp_path, "a", ["sh", "-c", 'pwd; echo "$1"; echo to-stderr >&2; echo "[$LEAKED]"', "sh", odd]),
        _process(tmp_path, "b", ["sh", "-c", "exit 3"]),
        _process(tmp_path, "c", ["sh", "-c", 'echo "$REPX_X"'], {"PATH": "/usr/bin:/bin", "REPX_X": "a b;c"}),
    ]
    script = batch_script([arm(i, p) for i, p in enumerate(processes)])
    assert [_run(script, i) for i in range(3)] == [0, 3, 0]
    a, b, c = processes
    assert a.stdout.read_text().splitlines() == [str(a.invocation.cwd), odd, "[]"]  # env -i: nothing leaks
    assert a.stderr.read_text() == "to-stderr\n"
    assert [p.exit_file.read_text().strip() for p in processes] == ["0", "3", "0"]
    assert c.stdout.read_text() == "a b;c\n"
    assert _run(script, 7) == 201  # an index nobody was given


def test_a_single_job_is_index_zero_and_a_missing_directory_is_reported(tmp_path):
    process = _process(tmp_path, "a", ["true"])
    os.rmdir(process.invocation.cwd)
    script = batch_script([arm(0, process)])
    assert _run(script, None) == 200
    assert "cannot enter" in process.stderr.read_text()
    assert not process.exit_file.exists()


def test_directives_follow_upstreams_resource_keys():
    d = Directives.from_resources({"partition": "gpu", "cpus-per-task": 4, "mem": "1.5G", "time": "01:00:00",
                                   "sbatch_opts": ["--qos=long", "--constraint=avx2"]})
    assert d.options() == ["--partition=gpu", "--cpus-per-task=4", "--mem=1536M", "--time=01:00:00",
                           "--qos=long", "--constraint=avx2"]
    assert Directives.from_resources({"queue": "short", "account": "lab42", "mem": "512MiB"}).options() == [
        "--partition=short", "--account=lab42", "--mem=512M"]
    assert Directives.from_resources({}) == Directives.from_resources({"sbatch_opts": []})
