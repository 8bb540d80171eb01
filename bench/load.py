"""Loading a 100,000-job Lab: `load_lab(verify=False)` (structure and validation) and
`load_lab(verify=True)` (plus the SHA-256 of every file), median of 3, warm page cache.

    python bench/load.py                 # N = 100000 (the Lab is written once under .bench/load/)
    python bench/load.py --n 20000 --profile
    python bench/load.py --baseline /tmp/repx-main --pairs 5   # against another tree, alternating
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dag import default_width, write_lab

from repxd.lab.loader import load_lab

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
GOAL_SECONDS = 3.0


def cached_lab(n: int) -> Path:
    work = BENCH / "load" / f"n{n}"
    stamp = work / "dag.json"
    key = {"n": n, "width": default_width(n), "version": 1}
    if not (stamp.exists() and json.loads(stamp.read_text()) == key):
        print(f"writing a {n}-job Lab under {work.relative_to(ROOT)} (once) ...", flush=True)
        start = time.perf_counter()
        work.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        write_lab(work / "lab", n)
        stamp.write_text(json.dumps(key))
        print(f"  written in {time.perf_counter() - start:.1f} s")
    return work / "lab"


def time_load(lab: Path, verify: bool, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        loaded = load_lab(lab, verify=verify)
        times.append(time.perf_counter() - start)
        del loaded
    return times


# One process per turn, so each tree imports its own `repxd`: a warm-up load, then the timed ones.
TURN = """
import sys, time
from repxd.lab.loader import load_lab
load_lab(sys.argv[1], verify=False)
for _ in range(int(sys.argv[2])):
    start, cpu = time.perf_counter(), time.process_time()
    lab = load_lab(sys.argv[1], verify=False)
    print(time.perf_counter() - start, time.process_time() - cpu)
    del lab  # freed outside the timed span, as in time_load
"""


def alternate(lab: Path, baseline: Path, pairs: int, repeat: int) -> None:
    """`load_lab(verify=False)` of this tree and of `baseline` (say, `git archive main` unpacked),
    in turns, so drift and other work on the machine weigh on both alike."""
    trees = {"this tree": ROOT, "baseline": baseline.resolve()}
    wall: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    ratios = []
    for pair in range(pairs):
        medians = {}
        for name, tree in sorted(trees.items(), reverse=pair % 2 == 1):  # who goes first alternates too
            out = subprocess.run([sys.executable, "-c", TURN, str(lab), str(repeat)], check=True, text=True,
                                 capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)}).stdout
            runs = [tuple(map(float, line.split())) for line in out.splitlines()]
            wall[name] += [w for w, _ in runs]
            cpu[name] += [c for _, c in runs]
            medians[name] = statistics.median(w for w, _ in runs)
        ratios.append(medians["this tree"] / medians["baseline"])
        print(f"  pair {pair + 1}: this tree {medians['this tree']:.2f} s, baseline {medians['baseline']:.2f} s, "
              f"ratio {ratios[-1]:.2f}  (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load+validate, median of {len(wall['this tree'])}: this tree {statistics.median(wall['this tree']):.2f} s "
          f"({statistics.median(cpu['this tree']):.2f} s CPU), baseline {statistics.median(wall['baseline']):.2f} s "
          f"({statistics.median(cpu['baseline']):.2f} s CPU); median ratio of the pairs {statistics.median(ratios):.2f}")


def describe(lab: Path) -> str:
    files = sum(len(names) for _, _, names in os.walk(lab))
    meta = sum(p.stat().st_size for p in (lab / "revision").iterdir())
    manifest = sum(p.stat().st_size for p in (lab / "lab").iterdir())
    return f"{files} files, run metadata {meta / 1e6:.1f} MB, manifest {manifest / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one load (verify=False)")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="time only load+validate, this tree against the tree SRC in turns")
    parser.add_argument("--pairs", type=int, default=5, help="turns of each tree with --baseline")
    args = parser.parse_args()
    lab = cached_lab(args.n)
    print(f"Lab: {args.n} jobs, {describe(lab)}; {len(os.sched_getaffinity(0))} CPUs")
    if args.baseline:
        alternate(lab, args.baseline, args.pairs, args.repeat)
        return

    load_lab(lab, verify=False)  # warm the page cache and the imports
    results = {"n": args.n}
    for verify in (False, True):
        times = time_load(lab, verify, args.repeat)
        median = statistics.median(times)
        label = "load+validate+sha256" if verify else "load+validate"
        results["verify" if verify else "no_verify"] = {"median": median, "runs": times}
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {label:<22} median {median:.2f} s  (runs: {runs})")
    no_verify = results["no_verify"]["median"]
    verdict = "meets" if no_verify <= GOAL_SECONDS else "misses"
    print(f"load+validate {verdict} the {GOAL_SECONDS:.0f} s goal ({no_verify:.2f} s)")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        load_lab(lab, verify=False)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)

    out = BENCH / "load-results.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
