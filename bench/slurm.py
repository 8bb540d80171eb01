"""SLURM client figures: scheduler commands and time to all-done for a sweep, repx against a
naive baseline (a shell loop, one `sbatch` per job, dependencies as afterok), on the same real
cluster (tests/slurm_cluster.py) and the same DAG, side by side in one invocation.

    python bench/slurm.py [--jobs 1000] [--poll 2]

Prints submission and status call counts (repx's goals: sbatch calls <= ceil(jobs / array size)
+ stages; status calls = 1 per poll cycle whatever the job count) and the time ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples" / "labs")]

from slurm_cluster import start_cluster  # noqa: E402

from repxd.lab.writer import LabWriter  # noqa: E402

SEED = '#!/bin/sh\necho 3 > "$1/n"\n'
LEAF = '#!/bin/sh\n: > "$1/done"\n'


def sweep_lab(where: Path, jobs: int) -> Path:
    """One seed job and `jobs - 1` leaves that need it: two stages."""
    writer = LabWriter()
    run = writer.run("sweep")
    seed = run.job("seed", SEED, outputs={"n": "$out/n"})
    for i in range(jobs - 1):
        run.job("leaf", LEAF, params={"i": i}, outputs={"done": "$out/done"}, inputs={"n": seed.output("n")})
    return writer.write(where / "lab")


def counting_path(where: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """The cluster's commands behind wrappers that log each call."""
    bin_dir, log = where / "bin", where / "calls.log"
    bin_dir.mkdir()
    for command in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sacctmgr"):
        real = shutil.which(command, path=env["PATH"])
        (bin_dir / command).write_text(f'#!/bin/sh\necho {command} >> "{log}"\nexec "{real}" "$@"\n')
        (bin_dir / command).chmod(0o755)
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}, log


def calls(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().split() if log.exists() else []:
        counts[line] = counts.get(line, 0) + 1
    return counts


NAIVE = """#!/bin/sh
# one sbatch per job, leaves after the seed; then wait for the queue to empty
set -e
out=$1; n=$2
seed=$(sbatch --parsable --job-name=naive-seed --output=/dev/null --wrap "echo 3 > $out/n")
i=1
while [ "$i" -lt "$n" ]; do
  sbatch --parsable --job-name=naive-leaf --output=/dev/null --dependency=afterok:$seed --kill-on-invalid-dep=yes \\
    --wrap ": > $out/done-$i" > /dev/null
  i=$((i + 1))
done
while [ -n "$(squeue --noheader --name=naive-seed,naive-leaf --format=%i)" ]; do sleep $3; done
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repx-bench-slurm-"))
    work.chmod(0o755)
    cluster = start_cluster(work / "cluster", max_array_size=1001)
    try:
        array_size = 1001
        lab = sweep_lab(work, args.jobs)
        env, log = counting_path(work, {**cluster.env, "PATH": os.environ["PATH"]})
        (work / "config.toml").write_text(
            f'[targets.hpc]\nbase_path = "{work / "hpc"}"\ndefault_scheduler = "slurm"\n'
            f'[targets.hpc.slurm]\npoll_interval = {args.poll}\nsubmit_window = 0.5\n')
        repxctl = shutil.which("repxctl") or str(Path(sys.executable).with_name("repxctl"))
        started = time.monotonic()
        done = subprocess.run([repxctl, "run", "sweep", "--lab", str(lab), "--config", str(work / "config.toml"),
                               "--target", "hpc", "--json"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"repxctl failed ({done.returncode}):\n{done.stderr}")
        repx_seconds = time.monotonic() - started
        repx_calls = calls(log)
        log.unlink()

        naive_out = work / "naive"
        naive_out.mkdir()
        (work / "naive.sh").write_text(NAIVE)
        started = time.monotonic()
        subprocess.run(["sh", str(work / "naive.sh"), str(naive_out), str(args.jobs), str(args.poll)], env=env, check=True)
        naive_seconds = time.monotonic() - started
        naive_calls = calls(log)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    stages = 2
    bound = math.ceil(args.jobs / array_size) + stages
    status = repx_calls.get("squeue", 0) + repx_calls.get("sacct", 0)
    print(f"SLURM sweep of {args.jobs} no-op jobs (1 seed + {args.jobs - 1} leaves), poll {args.poll}s, 2-node test cluster")
    print(f"{'':22}{'repx':>10}{'naive loop':>12}")
    print(f"{'sbatch calls':22}{repx_calls.get('sbatch', 0):>10}{naive_calls.get('sbatch', 0):>12}"
          f"   (goal for repx: <= {bound})")
    print(f"{'status calls':22}{status:>10}{naive_calls.get('squeue', 0):>12}"
          f"   (repx: {status / max(repx_seconds / args.poll, 1):.2f} per poll cycle)")
    print(f"{'submit to all done':22}{repx_seconds:>9.1f}s{naive_seconds:>11.1f}s   ratio repx/naive {repx_seconds / naive_seconds:.2f}")


if __name__ == "__main__":
    main()
