"""The example Labs, described with repx's Lab writer. `python examples/labs/definitions.py`
rewrites the committed Labs; tests call `build(name, dest, image=...)` for container variants.

Stage scripts are POSIX sh using only busybox-level tools, so they run natively and inside a
minimal image alike."""

from __future__ import annotations

import sys
from pathlib import Path

from repxd.lab.writer import WORK_ITEM, ImageSpec, LabWriter, Step, StepOutput, sweep

# `get KEY FILE` reads a scalar or a path from parameters.json or inputs.json (one key a line).
HEADER = """#!/bin/sh
set -eu
out="$1"; inputs="$2"; params="$3"
get() { sed -n "s/^ *\\"$1\\": *\\"\\{0,1\\}\\([^\\",]*\\)\\"\\{0,1\\},\\{0,1\\}$/\\1/p" "$2"; }
"""

PRODUCE = HEADER + """offset=$(get offset "$params")
for i in 1 2 3 4 5; do echo $((i + offset)); done > "$out/numbers.txt"
"""

SQUARE = HEADER + """numbers=$(get numbers "$inputs")
while read -r n; do echo $((n * n)); done < "$numbers" > "$out/squares.txt"
"""

TOTAL = HEADER + """squares=$(get squares "$inputs")
sum=0; while read -r n; do sum=$((sum + n)); done < "$squares"
echo "$sum" > "$out/total.txt"
"""

REPORT = HEADER + """meta=$(get metadata__simulation "$inputs")
base=$(get store__base "$inputs")
jobs=$(grep -c '"stage_type"' "$meta")
{ echo "simulation jobs: $jobs"; cat "$base"/outputs/*-total-1.0/out/total.txt; } > "$out/report.txt"
"""

GENERATE = HEADER + """seed=$(get seed "$params"); size=$(get size "$params")
i=1; while [ "$i" -le "$size" ]; do echo $(( (seed * 7919 + i * 104729) % 1000 )); i=$((i + 1)); done > "$out/data.txt"
"""

SCATTER = HEADER + """data=$(get data "$inputs")
{ printf '['; sep=''; while read -r v; do printf '%s{"value":%s}' "$sep" "$v"; sep=','; done < "$data"; echo ']'; } > "$out/work_items.json"
"""

STEP_SQUARE = HEADER + """item=$(get item "$inputs")
v=$(sed 's/[^0-9]//g' "$item")
echo $((v * v)) > "$out/square.txt"
"""

STEP_SHIFT = HEADER + """square=$(get square "$inputs")
shift_by=$(get shift "$params")
echo $(( $(cat "$square") + shift_by )) > "$out/shifted.txt"
"""

GATHER = HEADER + """manifest=$(get worker__outs "$inputs")
sum=0
for f in $(sed 's/[][{},]/\\n/g' "$manifest" | sed -n 's/^ *"shifted": *"\\(.*\\)"$/\\1/p'); do sum=$((sum + $(cat "$f"))); done
echo "$sum" > "$out/sum.txt"
"""

COLLECT = HEADER + """for key in $(sed -n 's/^ *"\\(sum_[0-9]*\\)":.*/\\1/p' "$inputs"); do
  printf '%s %s\\n' "$key" "$(cat "$(get "$key" "$inputs")")"
done > "$out/summary.txt"
"""


NAP = HEADER + """seconds=$(get seconds "$params")
echo "napping for ${seconds}s"
sleep "$seconds"
echo rested > "$out/rested.txt"
echo "awake after ${seconds}s"
"""


def naps(image: ImageSpec | None = None) -> LabWriter:
    """Long jobs with resource requests (memory, CPUs, a time limit), one run per length: for
    watching jobs while they run, and for restarting services under them."""
    lab = LabWriter(git_hash="0a70a70a" * 5)
    for seconds in (10, 20, 30):
        run = lab.run(f"nap-{seconds}s", image=image)
        run.job("nap", NAP, params={"seconds": seconds}, outputs={"rested": "$out/rested.txt"},
                resources={"mem": "96M", "cpus": 1, "time": "00:05:00"})
    # Asks for more time than its limit allows: where limits are enforced, it fails saying so.
    overtime = lab.run("nap-overtime", image=image)
    overtime.job("nap", NAP, params={"seconds": 60}, outputs={"rested": "$out/rested.txt"},
                 resources={"mem": "96M", "cpus": 1, "time": "00:00:03"})
    return lab


def simple(image: ImageSpec | None = None) -> LabWriter:
    """Two runs: simulation (produce -> square -> total) and analysis (reads simulation's results)."""
    lab = LabWriter(git_hash="e1a2c3d4" * 5)
    sim = lab.run("simulation", image=image)
    produce = sim.job("produce", PRODUCE, params={"offset": 1}, outputs={"numbers": "$out/numbers.txt"},
                      resources={"mem": "64M", "cpus": 1, "time": "00:01:00"})
    square = sim.job("square", SQUARE, inputs={"numbers": produce.output("numbers")}, outputs={"squares": "$out/squares.txt"})
    sim.job("total", TOTAL, inputs={"squares": square.output("squares")}, outputs={"total": "$out/total.txt"})
    analysis = lab.run("analysis", image=image)
    analysis.depends_on(sim)
    analysis.job("report", REPORT, outputs={"report": "$out/report.txt"})
    lab.group("all", [sim, analysis])
    return lab


def sweep_scatter(image: ImageSpec | None = None) -> LabWriter:
    """A parameter sweep over seeds, each feeding a scatter-gather stage, collected at the end."""
    lab = LabWriter(git_hash="5eed5eed" * 5)
    run = lab.run("sweep", image=image)
    sums = {}
    for params in sweep(seed=[1, 2, 3], size=[4]):
        data = run.job("generate", GENERATE, params=params, outputs={"data": "$out/data.txt"})
        stage = run.scatter_gather(
            "partition", params={"seed": params["seed"], "shift": 10},
            inputs={"data": data.output("data")},
            scatter=SCATTER,
            steps={
                "square": Step(STEP_SQUARE, inputs={"item": WORK_ITEM}, outputs={"square": "$out/square.txt"}),
                "shift": Step(STEP_SHIFT, inputs={"square": StepOutput("square", "square")},
                              outputs={"shifted": "$out/shifted.txt"}, deps=["square"]),
            },
            gather=GATHER, outputs={"sum": "$out/sum.txt"},
        )
        sums[f"sum_{params['seed']}"] = stage.output("sum")
    run.job("collect", COLLECT, inputs=sums, outputs={"summary": "$out/summary.txt"})
    lab.group("everything", [run])
    return lab


EXAMPLES = {"simple": simple, "sweep-scatter": sweep_scatter, "naps": naps}


def build(name: str, dest: Path, image: ImageSpec | None = None) -> Path:
    return EXAMPLES[name](image).write(dest)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for example in sys.argv[1:] or EXAMPLES:
        print(build(example, here / example))
