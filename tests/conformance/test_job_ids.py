"""Job ids of the reference Lab, recomputed here from upstream's formula, independently of
`repxd.lab.ids` (which the writer uses).

Upstream's formula, as repx-expand (nix/lib/crates/repx-expand) computes it in `params-only` hash
mode, the only one a Lab written without Nix can use:

- The id is the first 32 characters of Nix's base-32 encoding of a SHA-256 over parts joined by
  the three bytes `x00` (nix32.rs `JobIdHasher`).
- The parts (expand.rs `expand_stage`): the stage's identities (blueprint.rs `hash_identities`:
  `<pname>-<version>`, or for scatter-gather `<pname>-scatter-<v>`, `<pname>-step-<s>-<v>` per step
  in sorted order, `<pname>-gather-<v>`); the effective parameters as compact JSON with sorted keys
  (the stage's declared parameters, each from the run's combination or else its default); the
  dependency list as compact JSON; the hex SHA-256 of that list joined by `:`; the stage's input
  mappings as compact JSON, every field of `InputMapping` in declaration order, nulls included,
  hashed before `job_id` is filled in (a producer is named by `job_id_template`, its pname).
- The dependency list: the producer's directory once per intra-pipeline mapping, in mapping
  order (process-dependencies.nix: declaration order), and for an inter-run mapping every job
  directory of the source run in expansion order, repeats included. Runs expand in dependency
  order; a run's combinations in cartesian order over its axes (sorted by name) then its zip
  groups, the last varying fastest (cartesian.rs); each combination runs the pipeline's stages
  in order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_lab  # noqa: E402

from repxd.lab.writer import LabWriter  # noqa: E402

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
MAPPING_FIELDS = ("type", "job_id_template", "source_output", "target_input", "source_run",
                  "dependency_type", "source_value", "source", "source_key", "job_id")  # blueprint.rs InputMapping


def nix32(digest: bytes) -> str:
    """Character k (from the left) holds bits 5n..5n+4 of the digest, n = 51 - k, bit i of byte i//8."""
    bits = len(digest) * 8
    chars = []
    for n in reversed(range((bits + 4) // 5)):
        value = sum(1 << b for b in range(5) if n * 5 + b < bits and digest[(n * 5 + b) // 8] >> ((n * 5 + b) % 8) & 1)
        chars.append(NIX32[value])
    return "".join(chars)


def serde_compact(value: Any) -> str:
    """serde_json::to_writer of a BTreeMap / Vec of JSON values: no spaces, sorted object keys, UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def upstream_job_hash(identities: list[str], params: dict, deps: list[str], mappings: list[dict]) -> str:
    deps_json = json.dumps(deps, separators=(",", ":"), ensure_ascii=False)
    mappings_json = "[" + ",".join(
        "{" + ",".join(f"{json.dumps(k)}:{json.dumps(m.get(k), ensure_ascii=False)}" for k in MAPPING_FIELDS) + "}"
        for m in mappings) + "]"
    parts = [*identities, serde_compact(params), deps_json, hashlib.sha256(":".join(deps).encode()).hexdigest(), mappings_json]
    return nix32(hashlib.sha256("x00".join(parts).encode()).digest())[:32]


def test_nix32_encoding_matches_upstreams_own_vector() -> None:
    # nix32.rs test_nix32_encoding_empty_hash
    assert nix32(hashlib.sha256(b"").digest()) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


# The reference Lab (reference_lab.py) as upstream's blueprint would describe it.

def intra(producer: Any, output: str, target: str) -> dict:
    """`producer`: its pname, or a function of the combination for a pname computed from parameters."""
    return {"type": "intra-pipeline", "job_id_template": producer, "source_output": output, "target_input": target}


@dataclass
class Stage:
    pname: Any  # a string, or a function of the effective parameters (upstream's `pname = { parameters }: …`)
    defaults: dict[str, Any] = field(default_factory=dict)
    mappings: list[dict] = field(default_factory=list)
    steps: tuple[str, ...] = ()  # scatter-gather step names

    def identities(self, pname: str) -> list[str]:
        if not self.steps:
            return [f"{pname}-1.0"]
        return [f"{pname}-scatter-1.0", *(f"{pname}-step-{s}-1.0" for s in sorted(self.steps)), f"{pname}-gather-1.0"]


SIMULATION = [
    Stage("stage-A-producer", {"offset": 0, "template_dir": "", "nix_tool_bin": ""}),
    Stage("stage-B-producer", {"mode": "default", "config_file": "conf1.json"}),
    Stage("stage-C-consumer", mappings=[intra("stage-A-producer", "data_a", "data_a"),
                                        intra("stage-B-producer", "raw_output", "list_b")]),
    Stage("stage-D-partial-sums", mappings=[intra("stage-C-consumer", "combined_list", "number_list_file")],
          steps=("extract", "square", "double", "combine")),
    Stage("stage-E-total-sum", mappings=[intra("stage-D-partial-sums", "data__partial_sums", "data__partial_sums")]),
    Stage(lambda p: f"stage-F-dynamic-{p['mode']}", {"mode": "default", "multiplier": 1},
          mappings=[intra("stage-E-total-sum", "data.total_sum", "source_data")]),
    Stage("stage-G-multiarg", {"config": {}, "env": "", "offset": 0, "workload_args": reference_lab.WORKLOAD_ARGS},
          mappings=[intra(lambda combo: f"stage-F-dynamic-{combo['mode']}", "result", "source_data")]),
]
SIMULATION_AXES = {"offset": list(reference_lab.OFFSETS), "mode": list(reference_lab.MODES)}
SIMULATION_ZIP = [{"config": c, "multiplier": c["multiplier"]} for c in reference_lab.CONFIGS]
ANALYSIS = [Stage("stage-analysis", mappings=[
    {"type": "inter-run", "source_run": "simulation-run", "dependency_type": "soft", "target_input": "metadata__simulation-run"},
    {"type": "global", "source_value": "store_base", "target_input": "store__base"},
])]


def expand(stages: list[Stage], combos: list[dict], runs_expanded: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """(job directory, hashed dependency list) per stage per combination, in expansion order."""
    jobs = []
    for combo in combos:
        dirs_by_pname: dict[str, str] = {}
        for stage in stages:
            params = {k: combo[k] if combo.get(k) is not None else v for k, v in stage.defaults.items()}
            pname = stage.pname(params) if callable(stage.pname) else stage.pname
            mappings = [dict(m, job_id_template=m["job_id_template"](combo)) if callable(m.get("job_id_template")) else m
                        for m in stage.mappings]
            deps: list[str] = []
            for m in mappings:
                if m["type"] == "intra-pipeline":
                    deps.append(dirs_by_pname[m["job_id_template"]])
                elif m["type"] == "inter-run":  # a run the blueprint does not hold adds nothing
                    deps.extend(runs_expanded.get(m["source_run"], []))
            job_dir = f"{upstream_job_hash(stage.identities(pname), params, deps, mappings)}-{pname}-1.0"
            dirs_by_pname[pname] = job_dir
            jobs.append((job_dir, deps))
    return jobs


def cartesian(axes: dict[str, list], zip_rows: list[dict]) -> list[dict]:
    names = sorted(axes)
    return [dict(zip(names, values, strict=True)) | row
            for values in itertools.product(*(axes[n] for n in names)) for row in zip_rows]


@pytest.fixture(scope="module")
def expected() -> dict[str, list[tuple[str, list[str]]]]:
    simulation = expand(SIMULATION, cartesian(SIMULATION_AXES, SIMULATION_ZIP), {})
    analysis = expand(ANALYSIS, [{}], {"simulation-run": [d for d, _ in simulation]})
    return {"simulation-run": simulation, "analysis-run": analysis}


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    return reference_lab.write(tmp_path_factory.mktemp("ids") / "lab")


def test_every_job_id_is_upstreams(lab_dir: Path, expected) -> None:
    for run, jobs in expected.items():
        written = json.loads((lab_dir / "revision" / f"metadata-{run}.json").read_text())["jobs"]
        assert sorted(written) == sorted({d for d, _ in jobs}), run
    assert len(expected["simulation-run"]) == 8 * 7  # 8 combinations x 7 stages, repeats included


def test_hashed_dependency_lists_are_upstreams(lab_dir: Path, expected) -> None:
    """nix-input-dependencies.json holds the very list that was hashed (io.rs writes it as is)."""
    for jobs in expected.values():
        for job_dir, deps in jobs:
            assert (lab_dir / "jobs" / job_dir / "nix-input-dependencies.json").read_text() == \
                json.dumps(deps, separators=(",", ":"))
    ((_, analysis_deps),) = expected["analysis-run"]
    assert len(analysis_deps) == 56 and len(set(analysis_deps)) < 56  # every expanded job, repeats kept


def test_metadata_names_producers_as_upstream_fills_them_in(lab_dir: Path, expected) -> None:
    """After hashing, repx-expand sets `job_id` from `job_id_template` (the producer's pname)."""
    written = json.loads((lab_dir / "revision" / "metadata-simulation-run.json").read_text())["jobs"]
    for job_dir, deps in expected["simulation-run"]:
        job = written[job_dir]
        exe = job["executables"].get("main") or job["executables"]["scatter"]
        intra_pipeline = [m for m in exe["inputs"] if m["type"] == "intra-pipeline"]
        assert [m["job_id"] for m in intra_pipeline] == deps
        assert all(m["job_id"].split("-", 1)[1] == f"{m['job_id_template']}-1.0" for m in intra_pipeline)


def test_per_run_labs_have_upstreams_ids(tmp_path: Path, expected) -> None:
    """mkLab's `runs.<name>` expands one run alone (lab.nix blueprint2Lab with one run): the
    analysis stage's inter-run mapping then finds no expanded jobs to hash."""
    alone = expand(ANALYSIS, [{}], {})
    ((job_dir, deps),) = alone
    assert job_dir != expected["analysis-run"][0][0]
    lab = reference_lab.build().write(tmp_path / "analysis", only_run="analysis-run")
    assert list(json.loads((lab / "revision" / "metadata-analysis-run.json").read_text())["jobs"]) == [job_dir]
    assert (lab / "jobs" / job_dir / "nix-input-dependencies.json").read_text() == "[]" and deps == []

    lab = reference_lab.build().write(tmp_path / "simulation", only_run="simulation-run")
    written = json.loads((lab / "revision" / "metadata-simulation-run.json").read_text())["jobs"]
    assert sorted(written) == sorted({d for d, _ in expected["simulation-run"]})


def test_a_per_run_lab_renames_every_job_after_a_first_stage(tmp_path: Path) -> None:
    writer = LabWriter()
    upstream = writer.run("a")
    upstream.job("p", "#!/bin/sh\n", outputs={"x": "$out/x"})
    dependent = writer.run("b")
    dependent.depends_on(upstream)
    first = dependent.job("first", "#!/bin/sh\n", outputs={"y": "$out/y"})
    dependent.job("second", "#!/bin/sh\n", inputs={"y": first.output("y")})
    lab = writer.write(tmp_path / "b", only_run="b")

    first_mappings = [{"type": "inter-run", "source_run": "a", "dependency_type": "hard", "target_input": "metadata__a"},
                      {"type": "global", "source_value": "store_base", "target_input": "store__base"}]
    first_dir = f"{upstream_job_hash(['first-1.0'], {}, [], first_mappings)}-first-1.0"  # no run `a` to hash
    second_dir = f"{upstream_job_hash(['second-1.0'], {}, [first_dir], [intra('first', 'y', 'y')])}-second-1.0"
    jobs = json.loads((lab / "revision" / "metadata-b.json").read_text())["jobs"]
    assert sorted(jobs) == sorted([first_dir, second_dir])
    assert first_dir != first.id
    assert jobs[second_dir]["executables"]["main"]["inputs"][0]["job_id"] == first_dir
    assert jobs[second_dir]["executables"]["main"]["path"] == f"jobs/{second_dir}/bin/second"
