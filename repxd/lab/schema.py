"""Pydantic models of the Lab's JSON files (lab-format §2–4): the boundary with Nix-built Labs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    # Upstream adds keys over time; unknown keys are ignored, as upstream's loader does.
    # Mutable defaults are `default_factory`s: pydantic deep-copies a `= []` default for every
    # instance that lacks the key (100,000 deepcopy calls for a Lab whose executables have no `deps`).
    # Only keys are worth caching while parsing: values (job ids, paths, hashes) are nearly all
    # distinct, and looking each up in pydantic's string cache costs ~10% of parsing a big Lab.
    model_config = ConfigDict(extra="ignore", frozen=True, cache_strings="keys")


class FileEntry(_Lenient):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(_Lenient):
    files: list[FileEntry] = Field(default_factory=list)
    labId: str
    lab_version: str = "1.0.0"
    metadata: str


class RootMetadata(_Lenient):
    repx_version: str
    type: Literal["root"] = "root"
    gitHash: str
    runs: list[str]
    groups: dict[str, list[str]] = Field(default_factory=dict)


class InputMapping(_Lenient):
    target_input: str
    job_id: str | None = None
    source_output: str | None = None
    type: Literal["intra-pipeline", "inter-run", "global"] | None = None
    dependency_type: Literal["hard", "soft"] | None = None
    source_run: str | None = None
    source: str | None = None
    source_key: str | None = None


class ResourceHints(BaseModel):
    # Hints are free-form in upstream (gpus etc. may appear); keep what we don't know.
    model_config = ConfigDict(extra="allow", frozen=True)

    mem: str | None = None
    cpus: int | None = None
    time: str | None = None
    partition: str | None = None
    sbatch_opts: list[str] | None = None
    gpus: int | None = Field(default=None, ge=0)
    gpu: Literal["optional", "required"] | None = None


class Executable(_Lenient):
    path: str
    inputs: list[InputMapping] = Field(default_factory=list)
    # Upstream's `Executable.outputs` maps a name to any JSON value: a scatter declares
    # `worker__arg` as an object. Only path templates (strings) are resolved for consumers.
    outputs: dict[str, Any] = Field(default_factory=dict)
    # Scatter-gather executables carry their own hints (upstream's stage-scatter-gather.nix).
    resource_hints: ResourceHints | None = None
    deps: list[str] = Field(default_factory=list)


class JobSpec(_Lenient):
    name: str | None = None  # optional in upstream's model.rs
    stage_type: Literal["simple", "scatter-gather", "worker", "gather"] = "simple"
    params: Any = Field(default_factory=dict)  # any JSON value in upstream's model.rs
    executables: dict[str, Executable]
    resource_hints: ResourceHints | None = None


class RunMetadata(_Lenient):
    type: Literal["run"] = "run"
    name: str
    gitHash: str | None = None
    # Upstream's model.rs takes any string; its expand step writes "hard" or "soft".
    dependencies: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    jobs: dict[str, JobSpec] = Field(default_factory=dict)
