"""How long `repxctl --help` (and `--version`) takes, median of N runs of the installed
executable, and the modules the largest imports cost (`python -X importtime`). Goal: 150 ms.

    python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

GOAL_SECONDS = 0.150


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heaviest_imports(count: int = 8) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest imports of `repxctl.main`."""
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import repxctl.main"],
                           capture_output=True, text=True, check=True).stderr
    rows = []
    for line in trace.splitlines()[1:]:
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    exe = shutil.which("repxctl")
    if exe is None:
        sys.exit("repxctl is not on PATH; pip install -e . first")
    for flags in (["--help"], ["--version"]):
        seconds = median_seconds([exe, *flags], args.runs)
        verdict = "ok" if seconds <= GOAL_SECONDS else f"over the {GOAL_SECONDS * 1000:.0f} ms goal"
        print(f"repxctl {' '.join(flags):<10} median {seconds * 1000:6.1f} ms of {args.runs} runs ({verdict})")
    print("heaviest imports of repxctl.main (cumulative):")
    for micros, name in heaviest_imports():
        print(f"  {micros / 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
