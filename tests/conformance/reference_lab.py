"""A Lab shaped like upstream's reference Lab (repx-org/repx `nix/reference-lab`), stage by stage.

Upstream's Lab: two runs, `simulation-run` (stages A..G over a parameter sweep) and
`analysis-run` (one stage reading the simulation run's metadata, a soft inter-run dependency);
groups `all` and `compute`. What each stage here keeps from upstream's:

- A `stage-A-producer`: params offset/template_dir/nix_tool_bin, output `data_a`, mem/cpus/time hints.
- B `stage-B-producer`: params mode/config_file, output `raw_output`.
- C `stage-C-consumer`: inputs `data_a` (A) and `list_b` (B's `raw_output`, renamed), only a time hint.
- D `stage-D-partial-sums`: scatter-gather; scatter takes `number_list_file` (C's `combined_list`)
  and declares `worker__arg = {startIndex: 0}` (an object-valued output) and `work__items`;
  steps extract -> square, double -> combine, each with its own resources; gather gets `worker__outs`
  and writes `data__partial_sums`.
- E `stage-E-total-sum`: output named `data.total_sum` (a dot in the name).
- F `stage-F-dynamic-<mode>`: pname, outputs and resources computed from parameters.
- G `stage-G-multiarg`: a multi-word string parameter and a non-scalar (object) parameter.
- `stage-analysis` in analysis-run: inputs `store__base` and `metadata__simulation-run`.

As in upstream, parameter values are baked into the scripts (Nix interpolates them), and the
scripts are programs of the job contract `<script> OUT INPUTS_JSON PARAMETERS_JSON`. The sweep is
smaller than upstream's (8 pipelines instead of 64) to keep the test fast.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from repxd.lab.writer import WORK_ITEM, JobRef, LabWriter, Step, StepOutput

PY = "#!/usr/bin/env python3\nimport json, os, sys\nout, inputs = sys.argv[1], json.load(open(sys.argv[2]))\n"

OFFSETS = (1, 2)
MODES = ("fast", "slow")
CONFIGS = ({"multiplier": 2, "scale": 10}, {"multiplier": 3, "scale": 100})  # upstream's utils.zip
WORKLOAD_ARGS = "10 20 30"


def _producer_a(offset: int) -> str:
    return PY + f"open(os.path.join(out, 'numbers.txt'), 'w').write(''.join(f'{{i + {offset}}}\\n' for i in range(1, 6)))\n"


PRODUCER_B = PY + "open(os.path.join(out, 'numbers.txt'), 'w').write('6\\n7\\n8\\n9\\n10\\n')\n"
CONSUMER_C = PY + ("open(os.path.join(out, 'combined_list.txt'), 'w').write("
                   "open(inputs['data_a']).read() + open(inputs['list_b']).read())\n")
SCATTER = PY + ("n = len(open(inputs['number_list_file']).read().split())\n"
                "json.dump([{'startIndex': i} for i in range(n)], open(os.path.join(out, 'work_items.json'), 'w'))\n")
EXTRACT = PY + ("start = json.load(open(inputs['worker__item']))['startIndex']\n"
                "n = open(inputs['number_list_file']).read().split()[start]\n"
                "open(os.path.join(out, 'number.txt'), 'w').write(n + '\\n')\n")
SQUARE = PY + ("n = int(open(inputs['extracted_number']).read())\n"
               "open(os.path.join(out, 'squared.txt'), 'w').write(f'{n * n}\\n')\n")
DOUBLE = PY + ("n = int(open(inputs['extracted_number']).read())\n"
               "open(os.path.join(out, 'doubled.txt'), 'w').write(f'{n * 2}\\n')\n")
COMBINE = PY + ("s = int(open(inputs['squared']).read()) + int(open(inputs['doubled']).read())\n"
                "open(os.path.join(out, 'worker-result.txt'), 'w').write(f'{s}\\n')\n")
GATHER = PY + ("parts = [open(b['partial_sum']).read() for b in json.load(open(inputs['worker__outs']))]\n"
               "open(os.path.join(out, 'partial_sums.txt'), 'w').write(''.join(parts))\n")
TOTAL_E = PY + ("total = sum(int(x) for x in open(inputs['data__partial_sums']).read().split())\n"
                "open(os.path.join(out, 'total_sum.txt'), 'w').write(f'{total}\\n')\n")


def _dynamic_f(mode: str, multiplier: int) -> str:
    return PY + (f"value = int(open(inputs['source_data']).read().split()[0]) * {multiplier}\n"
                 f"open(os.path.join(out, 'result-{mode}.txt'), 'w').write(f'{{value}}\\n')\n"
                 f"open(os.path.join(out, 'summary.txt'), 'w').write('Processed with mode={mode}, multiplier={multiplier}\\n')\n")


def _multiarg_g(offset: int, args: str) -> str:
    return PY + (f"result = sum(int(a) + {offset} for a in {args!r}.split())\n"
                 "result += int(open(inputs['source_data']).read().split()[0])\n"
                 "params = json.load(open(sys.argv[3]))\n"
                 "assert params['config']['scale'] in (10, 100), params\n"
                 "open(os.path.join(out, 'multiarg_result.txt'), 'w').write(f'{result}\\n')\n")


# Upstream's analysis stage reads the simulation run's metadata, finds the total-sum jobs by name and
# their `data.total_sum` template, and reads each output under `store__base/outputs/<job>/out/`.
ANALYSIS = PY + """meta_path = inputs.get('metadata__simulation-run')
lines = []
if meta_path:
    jobs = json.load(open(meta_path))['jobs']
    for jid, job in sorted(jobs.items()):
        if 'stage-E-total-sum' in (job.get('name') or ''):
            rel = job['executables']['main']['outputs']['data.total_sum'][len('$out/'):]
            lines.append(open(os.path.join(inputs['store__base'], 'outputs', jid, 'out', rel)).read().strip())
else:
    lines.append('no simulation metadata')
open(os.path.join(out, 'plot.png'), 'w').write('\\n'.join(lines) + '\\n')
"""


def expected_total(offset: int) -> int:
    """stage E's result for one offset: the sum over C's list of n*n + 2n."""
    numbers = [i + offset for i in range(1, 6)] + [6, 7, 8, 9, 10]
    return sum(n * n + 2 * n for n in numbers)


def expected_multiarg(offset: int, multiplier: int) -> int:
    return sum(int(a) + offset for a in WORKLOAD_ARGS.split()) + expected_total(offset) * multiplier


STEP_RESOURCES = {"mem": "512M", "cpus": 1, "time": "00:05:00"}


def build() -> LabWriter:
    lab = LabWriter(git_hash="5d55276" + "0" * 33)
    sim = lab.run("simulation-run")
    analysis = lab.run("analysis-run")
    analysis.depends_on(sim, "soft")
    # Pipelines in upstream's expansion order (the run's axes by name, mode then offset, then the
    # zip group): the analysis stage hashes the simulation run's job directories in that order.
    for mode, offset, config in itertools.product(MODES, OFFSETS, CONFIGS):
        _pipeline(sim, offset, mode, config)
    analysis.job("stage-analysis", ANALYSIS, outputs={"analysis.plot": "$out/plot.png"})
    lab.group("all", [sim, analysis])
    lab.group("compute", [sim])
    return lab


def _pipeline(run, offset: int, mode: str, config: dict) -> JobRef:
    a = run.job("stage-A-producer", _producer_a(offset), params={"nix_tool_bin": "", "offset": offset, "template_dir": ""},
                outputs={"data_a": "$out/numbers.txt"}, resources={"mem": "256M", "cpus": 1, "time": "00:02:00"})
    b = run.job("stage-B-producer", PRODUCER_B, params={"config_file": "conf1.json", "mode": mode},
                outputs={"raw_output": "$out/numbers.txt"}, resources={"mem": "512M", "cpus": 1, "time": "00:05:00"})
    c = run.job("stage-C-consumer", CONSUMER_C, inputs={"data_a": a.output("data_a"), "list_b": b.output("raw_output")},
                outputs={"combined_list": "$out/combined_list.txt"}, resources={"time": "00:15:00"})
    numbers = c.output("combined_list")
    d = run.scatter_gather(
        "stage-D-partial-sums", scatter=SCATTER, gather=GATHER, worker_arg={"startIndex": 0},
        inputs={"number_list_file": numbers},
        steps={
            "extract": Step(EXTRACT, inputs={"worker__item": WORK_ITEM, "number_list_file": numbers},
                            outputs={"extracted_number": "$out/number.txt"}, resources=STEP_RESOURCES),
            "square": Step(SQUARE, inputs={"extracted_number": StepOutput("extract", "extracted_number")},
                           outputs={"squared": "$out/squared.txt"}, deps=["extract"], resources=STEP_RESOURCES),
            "double": Step(DOUBLE, inputs={"extracted_number": StepOutput("extract", "extracted_number")},
                           outputs={"doubled": "$out/doubled.txt"}, deps=["extract"], resources=STEP_RESOURCES),
            "combine": Step(COMBINE, inputs={"squared": StepOutput("square", "squared"), "doubled": StepOutput("double", "doubled")},
                            outputs={"partial_sum": "$out/worker-result.txt"}, deps=["double", "square"],
                            resources=STEP_RESOURCES),
        },
        outputs={"data__partial_sums": "$out/partial_sums.txt"},
        resources={"mem": "256M", "cpus": 1, "time": "00:02:00"},
        gather_resources={"mem": "1G", "cpus": 1, "time": "00:10:00"})
    e = run.job("stage-E-total-sum", TOTAL_E, inputs={"data__partial_sums": d.output("data__partial_sums")},
                outputs={"data.total_sum": "$out/total_sum.txt"})
    slow = mode == "slow"
    f = run.job(f"stage-F-dynamic-{mode}", _dynamic_f(mode, config["multiplier"]),
                params={"mode": mode, "multiplier": config["multiplier"]},
                inputs={"source_data": e.output("data.total_sum")},
                outputs={"result": f"$out/result-{mode}.txt", "summary": "$out/summary.txt"},
                resources={"mem": "1G" if slow else "512M", "cpus": 1, "time": "01:00:00" if slow else "00:10:00"})
    return run.job("stage-G-multiarg", _multiarg_g(offset, WORKLOAD_ARGS),
                   params={"config": config, "env": "", "offset": offset, "workload_args": WORKLOAD_ARGS},
                   inputs={"source_data": f.output("result")},
                   outputs={"data.multiarg_result": "$out/multiarg_result.txt"},
                   resources={"mem": "256M", "cpus": 1, "time": "00:02:00"})


def write(dest: Path, **options) -> Path:
    return build().write(dest, **options)
