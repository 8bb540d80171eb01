"""The analysis API (repxd.lab.analysis): what a user of upstream's repx-py relies on."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from repxd.lab import Experiment, JobCollection, JobView
from repxd.lab.analysis import LocalCacheResolver, ManifestResolver
from repxd.lab.writer import LabWriter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "labs"
SCRIPT = "#!/bin/sh\ntrue\n"


def _lab_writer() -> LabWriter:
    """sim: gen(seed) -> train(lr, size) -> score; gen's `size` is overridden by train's."""
    lab = LabWriter()
    sim = lab.run("sim")
    for seed in (1, 2):
        gen = sim.job("gen", SCRIPT, params={"seed": seed, "size": 10}, outputs={"data": "$out/data.csv"})
        train = sim.job("train", SCRIPT, params={"lr": 0.1 * seed, "size": 99, "opt": {"name": "adam"}},
                        inputs={"data": gen.output("data")}, outputs={"metrics": "$out/metrics.csv"},
                        resources={"mem": "1G"})
        sim.job("score", SCRIPT, inputs={"metrics": train.output("metrics")}, outputs={"score": "$out/score.txt"})
    report = lab.run("report")
    report.depends_on(sim)
    report.job("summary", SCRIPT, outputs={"summary": "$out/summary.txt"})
    return lab


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return _lab_writer().write(tmp_path / "lab")


def _finish(store: Path, job_id: str, files: dict[str, str], marker: str = "SUCCESS") -> None:
    """Fabricate a finished job under `store` as the engine would leave it."""
    out, repx = store / "outputs" / job_id / "out", store / "outputs" / job_id / "repx"
    out.mkdir(parents=True)
    repx.mkdir(parents=True)
    for name, content in files.items():
        (out / name).write_text(content)
    (repx / marker).write_text("")


@pytest.fixture
def exp(lab_dir: Path, tmp_path: Path) -> Experiment:
    store = tmp_path / "store"
    (store / "outputs").mkdir(parents=True)
    return Experiment(lab_dir, store_base=store)


def _one(exp: Experiment, name: str, seed: int) -> JobView:
    (job,) = exp.jobs().filter(lambda j: j.effective_params.get("seed") == seed, name=name)
    return job


def test_jobs_is_a_sequence_of_views(exp):
    jobs = exp.jobs()
    assert len(jobs) == 7
    assert isinstance(jobs[0], JobView) and jobs[0].id == next(iter(exp.lab.jobs))
    assert isinstance(jobs[1:3], JobCollection) and len(jobs[1:3]) == 2
    assert [j.id for j in jobs] == list(exp.lab.jobs)
    assert jobs.index(jobs[4]) == 4 and jobs[-1].name == "summary-1.0"


def test_filter_exact_and_operators(exp):
    jobs = exp.jobs()
    assert len(jobs.filter(name="train-1.0")) == 2
    assert len(jobs.filter(name__startswith="sc")) == 2
    assert len(jobs.filter(name__endswith="y-1.0")) == 1
    assert {j.name for j in jobs.filter(name__contains="ra")} == {"train-1.0"}
    assert len(jobs.filter(stage_type="simple")) == 7
    first = jobs[0].id
    assert [j.id for j in jobs.filter(id__startswith=first[:10])] == [first]
    assert len(jobs.filter(name="train-1.0").filter(lambda j: j.params["lr"] > 0.15)) == 1
    assert len(jobs.filter(name="nope")) == 0


def test_filter_by_parameter_uses_effective_params(exp):
    # Upstream's docs promise `filter(seed=42)`; train inherits seed from gen.
    assert {j.name for j in exp.jobs().filter(seed=2)} == {"gen-1.0", "train-1.0", "score-1.0"}
    assert len(exp.jobs().filter(seed=2, name__startswith="score")) == 1


def test_filter_on_missing_attribute_matches_nothing(exp):
    assert len(exp.jobs().filter(no_such_key=1)) == 0
    assert len(exp.jobs().filter(no_such_key__contains="x")) == 0


def test_unknown_filter_operator_compares_for_equality_and_warns(exp, caplog):
    with caplog.at_level(logging.WARNING, logger="repxd.lab.analysis"):
        assert len(exp.jobs().filter(name__exact="gen-1.0")) == 2
        assert len(exp.jobs().filter(name__unknownop="value")) == 0
    assert "Unknown filter operator: __exact" in caplog.text


def test_effective_params_inherit_transitively_and_own_params_win(exp):
    score = _one(exp, "score-1.0", 2)
    assert score.params == {}
    assert score.effective_params == {"seed": 2, "size": 99, "lr": 0.2, "opt": {"name": "adam"}}
    assert _one(exp, "gen-1.0", 2).effective_params == {"seed": 2, "size": 10}
    assert exp.effective_params[score.id] == score.effective_params
    score.effective_params["seed"] = 5  # a copy: the Experiment is unchanged
    assert score.effective_params["seed"] == 2


def test_dependencies(exp):
    train = _one(exp, "train-1.0", 1)
    deps = train.dependencies
    assert isinstance(deps, JobCollection)
    assert [d.id for d in deps] == [_one(exp, "gen-1.0", 1).id]
    assert len(deps[0].dependencies) == 0


def test_attribute_fallback_to_metadata_and_params(exp):
    train = _one(exp, "train-1.0", 1)
    assert train.resource_hints == {"mem": "1G"}
    assert train.executables["main"]["outputs"] == {"metrics": "$out/metrics.csv"}
    assert train.lr == 0.1 and train.seed == 1
    assert train.executable_path == f"jobs/{train.id}/bin/train"
    assert train.input_mappings[0]["job_id"] == train.dependencies[0].id
    with pytest.raises(AttributeError, match="no attribute, data key or parameter 'bogus'.*'lr'"):
        _ = train.bogus


def test_get_output_path_resolves_templates_under_store_base(exp, tmp_path):
    train = _one(exp, "train-1.0", 1)
    assert train.outputs == {"metrics": "$out/metrics.csv"}
    assert train.get_output_path("metrics") == (tmp_path / "store" / "outputs" / train.id / "out" / "metrics.csv").resolve()


def test_get_output_path_unknown_key_lists_the_available_ones(exp):
    with pytest.raises(KeyError, match=r"Output key 'metric' not found in job '.*'. Available keys: \['metrics'\]"):
        _one(exp, "train-1.0", 1).get_output_path("metric")


def test_load_csv_by_key_and_by_file_name(exp, tmp_path):
    train = _one(exp, "train-1.0", 1)
    _finish(tmp_path / "store", train.id, {"metrics.csv": "epoch,loss\n1,0.5\n2,0.25\n", "extra.tsv": "a\tb\n1\t2\n"})
    df = train.load_csv("metrics")
    assert list(df.columns) == ["epoch", "loss"] and df["loss"].tolist() == [0.5, 0.25]
    assert train.load_csv("extra.tsv", sep="\t").to_dict("records") == [{"a": 1, "b": 2}]


def test_load_csv_of_a_job_that_has_not_run_says_so(exp):
    with pytest.raises(FileNotFoundError, match="has no file .*metrics.csv.*has it run"):
        _one(exp, "train-1.0", 2).load_csv("metrics")


def test_to_dataframe_has_name_and_flattened_effective_params(exp):
    df = exp.jobs().filter(name__startswith="train").to_dataframe()
    assert df.index.name == "job_id"
    assert list(df.columns) == ["name", "seed", "size", "lr", "opt.name"]
    assert df["seed"].tolist() == [1, 2] and set(df["opt.name"]) == {"adam"}
    assert exp.jobs().filter(name="nope").to_dataframe().empty


def test_pandas_missing_gives_install_hint(exp, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'repx\[analysis\]'"):
        exp.jobs().to_dataframe()


def test_importing_repxd_lab_does_not_import_pandas():
    code = "import sys, repxd.lab; from repxd.lab import Experiment; print('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_status_from_markers(exp, tmp_path):
    gen, train, score = (_one(exp, n, 1) for n in ("gen-1.0", "train-1.0", "score-1.0"))
    assert (gen.status, train.status) == ("Pending", "Blocked")
    _finish(tmp_path / "store", gen.id, {"data.csv": "x\n"})
    _finish(tmp_path / "store", train.id, {}, marker="FAIL")
    assert (gen.status, train.status, score.status) == ("Succeeded", "Failed", "Blocked")
    assert [j.id for j in exp.jobs().filter(status="Succeeded")] == [gen.id]


def test_status_without_store_base_is_explained(lab_dir):
    with pytest.raises(ValueError, match="store_base"):
        _ = Experiment(lab_dir).jobs()[0].status


def test_get_job_by_id_or_unique_prefix(exp):
    job_id = exp.jobs()[2].id
    assert exp.get_job(job_id) is exp.get_job(job_id[:12]) is exp.jobs()[2]
    with pytest.raises(KeyError, match="Job ID 'zzz' not found"):
        exp.get_job("zzz")
    # ids start with 0 or 1 (lab-format §11): with 7 jobs one of these prefixes is shared
    shared = max("01", key=lambda c: sum(j.startswith(c) for j in exp.lab.jobs))
    with pytest.raises(KeyError, match=f"prefix '{shared}' is ambiguous: it matches [4-7] jobs"):
        exp.get_job(shared)


def test_runs_and_get_run_for_job(exp):
    assert list(exp.runs()) == ["sim", "report"]
    assert exp.runs()["report"]["dependencies"] == {"revision/metadata-sim.json": "hard"}
    summary = exp.jobs().filter(name="summary-1.0")[0]
    run_name, run = exp.get_run_for_job(summary.id[:10])
    assert run_name == "report" and summary.id in run["jobs"]
    with pytest.raises(KeyError, match="Could not find a run containing job 'zzz'"):
        exp.get_run_for_job("zzz")


def test_from_run_metadata_with_a_base_path_or_its_outputs_dir(lab_dir, tmp_path):
    store = tmp_path / "store"
    meta = lab_dir / "revision" / "metadata-sim.json"
    (store / "outputs").mkdir(parents=True)
    exp = Experiment.from_run_metadata(meta, store)
    assert len(exp.jobs()) == 6 and list(exp.runs()) == ["sim"]
    score = _one(exp, "score-1.0", 1)
    assert score.effective_params["lr"] == 0.1
    assert score.get_output_path("score") == (store / "outputs" / score.id / "out" / "score.txt").resolve()
    assert score.status == "Blocked"
    exp2 = Experiment.from_run_metadata(meta, store / "outputs")
    assert exp2.get_job(score.id).get_output_path("score") == score.get_output_path("score")


def test_from_run_metadata_rejects_other_files(lab_dir, tmp_path):
    with pytest.raises(ValueError, match="Expected metadata type 'run', got 'root'"):
        Experiment.from_run_metadata(lab_dir / "revision" / "metadata-top.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="Metadata file not found"):
        Experiment.from_run_metadata(tmp_path / "missing.json", tmp_path)


def test_tar_lab_unpacks_under_store_base_cache(tmp_path):
    tar = _lab_writer().write_tar(tmp_path / "lab.tar")
    exp = Experiment(tar, store_base=tmp_path / "store")
    assert len(exp.jobs()) == 7
    assert (tmp_path / "store" / "cache" / "labs") in exp.lab.root.parents
    assert len(Experiment(tar).jobs().filter(name="gen-1.0")) == 2  # unpacked into a temp dir


def test_resolvers(lab_dir, tmp_path):
    job_id = next(iter(Experiment(lab_dir).lab.jobs))
    exp = Experiment(lab_dir, ManifestResolver({job_id: tmp_path / "elsewhere"}))  # upstream's positional order
    assert exp.get_job(job_id).get_output_path("data") == tmp_path / "elsewhere" / "data.csv"
    other = exp.jobs()[1]
    with pytest.raises(FileNotFoundError, match="No output path recorded"):
        other.get_output_path(next(iter(other.outputs)))
    exp = Experiment(lab_dir, store_base=tmp_path / "s", resolver=LocalCacheResolver(tmp_path / "c"))
    assert exp.get_job(job_id).get_output_path("data") == tmp_path / "c" / job_id / "out" / "data.csv"


def test_example_simple_lab(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import definitions
    finally:
        sys.path.remove(str(EXAMPLES))
    lab = definitions.build("simple", tmp_path / "simple")
    store = tmp_path / "store"
    exp = Experiment(lab, store_base=store)
    total = exp.jobs().filter(name__startswith="total")[0]
    assert total.effective_params == {"offset": 1}
    assert exp.get_run_for_job(total.id)[0] == "simulation"
    _finish(store, total.id, {"total.txt": "90\n"})
    assert total.status == "Succeeded" and total.get_output_path("total").read_text() == "90\n"
    report = exp.jobs().filter(name="report-1.0")[0]
    assert len(report.dependencies) == 0 and report.status == "Pending"  # inter-run: no job deps
