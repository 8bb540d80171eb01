"""The loaded Lab as plain dataclasses: what the engine, the CLI and analysis code work with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import RootMetadata
from .specs import Executable, JobSpec, Manifest


@dataclass(frozen=True, slots=True)
class Job:
    """One job of a Lab. `id` is the key of the run's `jobs` map (`<hash>-<pname>-<version>`),
    which is also the name of its directory under `jobs/` and under `<base>/outputs/`."""

    id: str
    run: str
    spec: JobSpec
    deps: tuple[str, ...]
    soft_deps: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The stage name; upstream allows it to be absent, then the id without its hash stands in."""
        return self.spec.name or self.id.partition("-")[2] or self.id

    @property
    def stage_type(self) -> str:
        return self.spec.stage_type

    @property
    def params(self) -> dict[str, Any]:
        """Named parameters; `spec.params` keeps the JSON value as the Lab wrote it (parameters.json)."""
        params = self.spec.params
        return params if isinstance(params, dict) else {}

    @property
    def executables(self) -> dict[str, Executable]:
        return self.spec.executables

    @property
    def is_scatter_gather(self) -> bool:
        return self.spec.stage_type == "scatter-gather"

    @property
    def outputs(self) -> dict[str, Any]:
        exe = self.executables.get("main") or self.executables.get("gather")
        return dict(exe.outputs) if exe else {}

    @property
    def resource_hints(self) -> dict[str, Any]:
        hints = self.spec.resource_hints
        return hints.model_dump(exclude_none=True) if hints else {}


@dataclass(slots=True)
class Run:
    name: str
    metadata_path: str
    dependencies: dict[str, str]  # run name -> "hard" | "soft"
    image: str | None
    job_ids: list[str]


@dataclass(slots=True)
class Lab:
    root: Path
    manifest: Manifest
    root_metadata: RootMetadata
    runs: dict[str, Run]
    jobs: dict[str, Job]
    groups: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what loads but differs from a whole Lab

    @property
    def lab_id(self) -> str:
        return self.manifest.labId

    def run_of(self, job_id: str) -> Run:
        return self.runs[self.jobs[job_id].run]

    def image_of(self, job_id: str) -> str | None:
        return self.run_of(job_id).image
