"""Query a Lab and its jobs' outputs from Python; the API of upstream repx-py (`repx_py.models`).

    exp = Experiment("./result", store_base="/var/lib/repx/work")
    for job in exp.jobs().filter(name__startswith="total"):
        print(job.effective_params, job.get_output_path("total").read_text())
    df = exp.jobs().to_dataframe()          # one row per job, effective params as columns

Outputs of job J live at `<store_base>/outputs/<J>/out/` (lab-format §6). pandas is imported only
by the methods that return DataFrames (`pip install 'repx[analysis]'`)."""

from __future__ import annotations

import json
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..exec.layout import OutputLayout
from .graph import JobStatus, matching_jobs, statuses, topological_order
from .loader import load_lab
from .model import Job, Lab, Run
from .schema import RootMetadata, RunMetadata
from .specs import Manifest, from_model

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

_MISSING = object()
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "startswith": lambda actual, wanted: str(actual).startswith(wanted),
    "endswith": lambda actual, wanted: str(actual).endswith(wanted),
    "contains": lambda actual, wanted: wanted in str(actual),
}


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("this needs pandas, which is not installed: pip install 'repx[analysis]'") from None
    return pandas


class ArtifactResolver(ABC):
    """Where a job's output files are: `resolve_path(job, "results.csv")` -> its path."""

    @abstractmethod
    def resolve_path(self, job: JobView, relative_path: str) -> Path: ...


class LocalCacheResolver(ArtifactResolver):
    """`<cache_dir>/<job id>/out/<relative_path>`; `cache_dir` is a base path's `outputs/`."""

    def __init__(self, cache_dir: str | Path = ".repx-cache") -> None:
        self.cache_dir = Path(cache_dir).resolve()

    def resolve_path(self, job: JobView, relative_path: str) -> Path:
        return self.cache_dir / job.id / "out" / relative_path


class ManifestResolver(ArtifactResolver):
    """Output directories given explicitly: `{job id: directory}`."""

    def __init__(self, job_output_map: dict[str, str | Path]) -> None:
        self.mapping = {job_id: Path(p) for job_id, p in job_output_map.items()}

    def resolve_path(self, job: JobView, relative_path: str) -> Path:
        if job.id not in self.mapping:
            raise FileNotFoundError(f"No output path recorded for job '{job.id}' in the provided manifest.")
        return self.mapping[job.id] / relative_path


class JobView:
    """One job: its metadata, effective parameters and output files. Attributes it does not define
    fall back to the job's raw metadata keys (`executables`, `resource_hints`, ...), then to its
    effective parameters, so `job.seed` and `filter(seed=1)` work."""

    def __init__(self, job_id: str, experiment: Experiment) -> None:
        self._id = job_id
        self._exp = experiment
        self._job: Job = experiment.lab.jobs[job_id]

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def stage_type(self) -> str:
        return self._job.stage_type

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._job.params)

    @property
    def effective_params(self) -> dict[str, Any]:
        """Parameters inherited transitively from the dependencies; the job's own params win."""
        return dict(self._exp.effective_params[self._id])

    @property
    def outputs(self) -> dict[str, str]:
        """Output name -> template (`$out/x`); the gather outputs for scatter-gather stages."""
        return self._job.outputs

    @property
    def executable_path(self) -> str | None:
        exe = self._job.executables.get("main") if self.stage_type == "simple" else None
        return exe.path if exe else None

    @property
    def input_mappings(self) -> list[dict[str, Any]]:
        exe = {"simple": "main", "scatter-gather": "scatter"}.get(self.stage_type)
        return self._raw().get("executables", {}).get(exe, {}).get("inputs", []) if exe else []

    @property
    def dependencies(self) -> JobCollection:
        return JobCollection(self._exp, self._job.deps)

    @property
    def status(self) -> JobStatus:
        """Succeeded / Failed from the markers under store_base, else Pending / Blocked."""
        return self._exp._statuses([self._id])[self._id]

    def get_output_path(self, output_key: str) -> Path:
        template = self.outputs.get(output_key)
        if not template:
            raise KeyError(f"Output key '{output_key}' not found in job '{self.id}'. "
                           f"Available keys: {list(self.outputs)}")
        relative = template.removeprefix("$out/")
        return self._exp.resolver.resolve_path(self, relative)

    def load_csv(self, output_key_or_filename: str, **kwargs: Any) -> pd.DataFrame:
        """Read an output (by key, or a file name inside the job's `out/`) with `pandas.read_csv`."""
        pd = _pandas()
        if output_key_or_filename in self.outputs:
            path = self.get_output_path(output_key_or_filename)
        else:
            path = self._exp.resolver.resolve_path(self, output_key_or_filename)
        if not Path(path).exists():
            raise FileNotFoundError(f"job {self.id} has no file {path} (outputs: {list(self.outputs)}); "
                                    "has it run, and is store_base the base path it ran under?")
        return pd.read_csv(path, **kwargs)

    def _raw(self) -> dict[str, Any]:
        return self._exp.runs()[self._job.run]["jobs"][self._id]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        raw = self._raw()
        if key in raw:
            return raw[key]
        params = self._exp.effective_params[self._id]
        if key in params:
            return params[key]
        # `param_<NAME>` is how upstream's documentation filters on parameters (filter(param_seed=2)).
        if key.startswith("param_") and key[len("param_"):] in params:
            return params[key[len("param_"):]]
        raise AttributeError(f"'JobView' object has no attribute, data key or parameter '{key}' "
                             f"(job {self._id} has parameters {sorted(params)})")

    def __repr__(self) -> str:
        return f"<JobView id={self.id} name={self.name}>"


class JobCollection(Sequence[JobView]):
    """An ordered, list-like selection of jobs; `filter` and slicing return new collections."""

    def __init__(self, experiment: Experiment, job_ids: Iterable[str]) -> None:
        self._exp = experiment
        self._job_ids = list(job_ids)

    def filter(self, predicate: Callable[[JobView], bool] | None = None, **kwargs: Any) -> JobCollection:
        """Jobs matching `predicate` and every `attr=value` (exact), `attr__startswith=`,
        `attr__endswith=` or `attr__contains=` (on `str(value)`). A job lacking `attr` never matches."""
        tests = []
        for key, wanted in kwargs.items():
            attr, sep, op = key.partition("__")
            if sep and op not in _OPERATORS:
                logger.warning("Unknown filter operator: __%s (comparing for equality)", op)
            tests.append((attr, _OPERATORS.get(op) if sep else None, wanted))

        def match(job: JobView) -> bool:
            if predicate is not None and not predicate(job):
                return False
            for attr, compare, wanted in tests:
                actual = getattr(job, attr, _MISSING)
                if actual is _MISSING or not (compare(actual, wanted) if compare else actual == wanted):
                    return False
            return True

        return JobCollection(self._exp, [j for j in self._job_ids if match(self._exp.get_job(j))])

    def to_dataframe(self) -> pd.DataFrame:
        """Columns `name` and the effective parameters (nested ones flattened), indexed by `job_id`."""
        pd = _pandas()
        rows = [{"job_id": job.id, "name": job.name, **job.effective_params} for job in self]
        if not rows:
            return pd.DataFrame()
        df = pd.json_normalize(rows)
        if "job_id" in df.columns and df["job_id"].is_unique:
            df = df.set_index("job_id")
        return df

    def __iter__(self) -> Iterator[JobView]:
        return (self._exp.get_job(j) for j in self._job_ids)

    def __len__(self) -> int:
        return len(self._job_ids)

    @overload
    def __getitem__(self, index: int) -> JobView: ...

    @overload
    def __getitem__(self, index: slice) -> JobCollection: ...

    def __getitem__(self, index: int | slice) -> JobView | JobCollection:
        if isinstance(index, slice):
            return JobCollection(self._exp, self._job_ids[index])
        return self._exp.get_job(self._job_ids[index])

    def __repr__(self) -> str:
        return f"<JobCollection size={len(self)}>"


class Experiment:
    """A Lab and the base path its jobs ran under. `resolver` overrides where outputs are looked
    up; without it and without `store_base`, upstream's default `./.repx-cache/<job>/out` is used."""

    def __init__(self, lab_path: str | Path | None = None, store_base: str | Path | None = None,
                 resolver: ArtifactResolver | None = None, *, _lab: Lab | None = None,
                 _runs: dict[str, dict[str, Any]] | None = None) -> None:
        if isinstance(store_base, ArtifactResolver) and resolver is None:
            store_base, resolver = None, store_base  # upstream's positional order: (lab_path, resolver)
        self.store_base = Path(store_base).resolve() if store_base is not None else None
        if resolver is None:
            resolver = LocalCacheResolver(OutputLayout(self.store_base).outputs if self.store_base else ".repx-cache")
        self.resolver = resolver
        self._tmp: tempfile.TemporaryDirectory | None = None
        if _lab is not None:
            self.path, self.lab = _lab.root, _lab
        elif lab_path is not None:
            self.path = Path(lab_path).resolve()
            self.lab = load_lab(self.path, verify=False, unpack_dir=self._unpack_dir() if self.path.is_file() else None)
        else:
            raise ValueError("Experiment needs a Lab: Experiment('./result', store_base=...)")
        self._runs = _runs
        self._effective: dict[str, dict[str, Any]] | None = None
        self._views: dict[str, JobView] = {}

    def _unpack_dir(self) -> Path:
        if self.store_base is not None:
            return OutputLayout(self.store_base).cache / "labs"
        self._tmp = tempfile.TemporaryDirectory(prefix="repx-lab-")  # removed with the Experiment
        return Path(self._tmp.name)

    @classmethod
    def from_run_metadata(cls, metadata_path: str | Path, store_base: str | Path) -> Experiment:
        """The jobs of one run, from its metadata file: inside an analysis stage, pass the inputs
        `metadata__<run>` and `store__base` (a base path, or directly its `outputs/`)."""
        meta_path = Path(metadata_path)
        if not meta_path.is_file():
            raise FileNotFoundError(f"Metadata file not found: {meta_path}")
        raw = json.loads(meta_path.read_text())
        if raw.get("type") != "run":
            raise ValueError(f"Expected metadata type 'run', got '{raw.get('type')}' in {meta_path}")
        meta = from_model(RunMetadata.model_validate(raw))
        jobs = _link({job_id: Job(job_id, meta.name, spec, ()) for job_id, spec in meta.jobs.items()})
        run = Run(meta.name, f"revision/{meta_path.name}", {}, meta.image, list(meta.jobs))
        lab = Lab(meta_path.resolve().parent.parent, Manifest(labId="", metadata=""),
                  RootMetadata(repx_version="", gitHash=meta.gitHash or "", runs=[run.metadata_path]),
                  {meta.name: run}, jobs)
        store = Path(store_base)
        if (store / "outputs").is_dir():
            return cls(store_base=store, _lab=lab, _runs={meta.name: raw})
        return cls(resolver=LocalCacheResolver(store), _lab=lab, _runs={meta.name: raw})

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run name -> the run's metadata as in its JSON file (`name`, `jobs`, `dependencies`, ...)."""
        if self._runs is None:
            self._runs = {name: json.loads((self.lab.root / run.metadata_path).read_text())
                          for name, run in self.lab.runs.items()}
        return self._runs

    def jobs(self) -> JobCollection:
        return JobCollection(self, self.lab.jobs)

    def get_job(self, job_id: str) -> JobView:
        """The job with this id, or the only one whose id starts with it."""
        view = self._views.get(job_id)
        if view is None:
            full = self._resolve(job_id)
            view = self._views.get(full) or self._views.setdefault(full, JobView(full, self))
        return view

    def get_run_for_job(self, job_id: str) -> tuple[str, dict[str, Any]]:
        try:
            run_name = self.lab.jobs[self._resolve(job_id)].run
        except KeyError:
            raise KeyError(f"Could not find a run containing job '{job_id}'.") from None
        return run_name, self.runs()[run_name]

    @property
    def effective_params(self) -> dict[str, dict[str, Any]]:
        """Job id -> its parameters merged over its dependencies' (transitively; own params win)."""
        if self._effective is None:
            effective: dict[str, dict[str, Any]] = {}
            for job_id in topological_order(self.lab, self.lab.jobs):
                job = self.lab.jobs[job_id]
                merged: dict[str, Any] = {}
                for dep in job.deps:
                    merged.update(effective[dep])
                merged.update(job.params)
                effective[job_id] = merged
            self._effective = effective
        return self._effective

    def _resolve(self, job_id: str) -> str:
        matches = matching_jobs(self.lab, job_id)
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
            raise KeyError(f"Job ID prefix '{job_id}' is ambiguous: it matches {len(matches)} jobs ({shown}).")
        raise KeyError(f"Job ID '{job_id}' not found (the Lab has {len(self.lab.jobs)} jobs; see exp.jobs()).")

    def _statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if self.store_base is None:
            raise ValueError("job status needs the base path the jobs ran under: Experiment(lab, store_base=...)")
        wanted = set(job_ids).union(*(self.lab.jobs[j].deps for j in job_ids))
        return statuses(self.lab, job_ids, OutputLayout(self.store_base).outcomes(wanted))

    def __repr__(self) -> str:
        return f"<Experiment lab={self.path} jobs={len(self.lab.jobs)} store_base={self.store_base}>"


def _link(jobs: dict[str, Job]) -> dict[str, Job]:
    """Fill in each job's dependencies from its input mappings (those outside `jobs` are ignored)."""
    linked = {}
    for job_id, job in jobs.items():
        hard: list[str] = []
        soft: set[str] = set()
        for exe in job.executables.values():
            for mapping in exe.inputs:
                dep = mapping.job_id
                if dep is None or dep == "self" or dep not in jobs:
                    continue
                if mapping.dependency_type == "soft":
                    soft.add(dep)
                elif dep not in hard:
                    hard.append(dep)
        soft -= set(hard)
        linked[job_id] = Job(job_id, job.run, job.spec, (*hard, *sorted(soft)), frozenset(soft))
    return linked
