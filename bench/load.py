"""Loading a 100,000-job Lab: `load_lab(verify=False)` (structure and validation) and
`load_lab(verify=True)` (plus the SHA-256 of every file), median of 3, warm page cache.

    python bench/load.py                 # N = 100000 (the Lab is written once under .bench/load/)
    python bench/load.py --n 20000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import statistics
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
    args = parser.parse_args()
    lab = cached_lab(args.n)
    print(f"Lab: {args.n} jobs, {describe(lab)}; {len(os.sched_getaffinity(0))} CPUs")

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
