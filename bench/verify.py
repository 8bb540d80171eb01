"""Verifying a Lab (SHA-256 of every file its manifest lists, `verify_files`) against coreutils'
`sha256sum` over the same files, run in parallel by `xargs -P <CPUs>`: the goal is ≥ 80% of
sha256sum's speed. Interleaved (ours, theirs, ours, ...), warm page cache, medians.

    python bench/verify.py                 # the 100,000-job Lab of bench/load.py
    python bench/verify.py --n 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from load import cached_lab

from repxd.lab.loader import load_lab
from repxd.lab.verification import verify_files

GOAL = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lab = load_lab(cached_lab(args.n), verify=False)
    files = [str(lab.root / entry.path) for entry in lab.manifest.files]
    size = sum(os.path.getsize(f) for f in files)
    cpus = len(os.sched_getaffinity(0))
    listing = "\0".join(files).encode()
    print(f"{len(files)} files, {size / 1e6:.1f} MB; {cpus} CPUs")

    def ours() -> float:
        start = time.perf_counter()
        verify_files(lab.root, lab.manifest)
        return time.perf_counter() - start

    def theirs() -> float:
        start = time.perf_counter()
        subprocess.run(["xargs", "-0", "-P", str(cpus), "-n", "512", "sha256sum"], input=listing,
                       stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    ours(), theirs()  # warm the page cache
    pairs = [(ours(), theirs()) for _ in range(args.repeat)]
    mine, coreutils = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    ratios = [t / o for o, t in pairs]
    share = statistics.median(ratios)
    print(f"  repx verify_files         median {mine:.2f} s")
    print(f"  xargs -P {cpus} sha256sum      median {coreutils:.2f} s")
    print(f"  repx at {share:.0%} of sha256sum's speed (per pair: {', '.join(f'{r:.0%}' for r in ratios)}); "
          f"goal {GOAL:.0%}: {'met' if share >= GOAL else 'missed'}")


if __name__ == "__main__":
    main()
