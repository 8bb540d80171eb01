"""config.toml (targets) and resources.toml (lab-format §8–9), with their merge rules.

Unknown keys are errors that name the key and the file."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ExecutionType = Literal["native", "bwrap", "docker", "podman"]
SchedulerType = Literal["local", "slurm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SchedulerSettings(_Strict):
    execution_types: list[ExecutionType] = []
    local_concurrency: int | None = Field(default=None, ge=1)


class LoggingSettings(_Strict):
    max_files: int = 50
    max_age_days: int = 30


class TargetConfig(_Strict):
    address: str | None = None
    base_path: Path
    node_local_path: Path | None = None
    default_scheduler: SchedulerType = "local"
    default_execution_type: ExecutionType | None = None
    artifact_store: str | None = None
    mount_host_paths: bool = False
    mount_paths: list[str] = []
    local: SchedulerSettings | None = None
    slurm: SchedulerSettings | None = None

    def execution_types(self, scheduler: str) -> list[str]:
        settings = self.slurm if scheduler == "slurm" else self.local
        return list(settings.execution_types) if settings else []


class Config(_Strict):
    theme: str | None = None
    submission_target: str | None = None
    default_scheduler: SchedulerType | None = None
    logging: LoggingSettings = LoggingSettings()
    targets: dict[str, TargetConfig] = {}


MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
TIME_RE = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_memory(text: str | int) -> int:
    """'256M', '4G', '1.5GiB', 1024 -> bytes."""
    if isinstance(text, int):
        return text
    m = MEMORY_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a memory size (use e.g. 512M, 4G)")
    factor = 1024 ** " KMGT".index((m.group(2) or " ").upper())
    return int(float(m.group(1)) * factor)


def parse_time(text: str) -> int:
    """SLURM-style '[D-]HH:MM:SS' or 'MM:SS' -> seconds."""
    m = TIME_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time limit (use HH:MM:SS or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class ResourceRule(_Strict):
    job_id_glob: str | None = None
    target: str | None = None
    partition: str | None = None
    cpus_per_task: int | None = Field(default=None, alias="cpus-per-task", ge=1)
    mem: str | None = None
    time: str | None = None
    sbatch_opts: list[str] | None = None
    gpus: int | None = Field(default=None, ge=0)
    gpu: Literal["optional", "required"] | None = None  # optional: run on a CPU when no GPU is free
    worker_resources: ResourceRule | None = None

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None:
            parse_memory(value)
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)
        return value

    def values(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"job_id_glob", "target", "worker_resources"})


class Resources(_Strict):
    defaults: ResourceRule = ResourceRule()
    rules: list[ResourceRule] = []

    def for_job(self, job_id: str, hints: dict[str, Any], target: str | None) -> dict[str, Any]:
        """defaults, then the Lab's hints (`cpus` -> `cpus-per-task`), then every matching rule."""
        merged = self.defaults.values()
        for key, value in hints.items():
            merged["cpus-per-task" if key == "cpus" else key] = value
        for rule in self._matching(job_id, target):
            merged.update(rule.values())
        return merged

    def worker_for(self, job_id: str, target: str | None) -> dict[str, Any]:
        """Resources of scatter-gather steps: the matching rules' `worker_resources`, in order."""
        merged: dict[str, Any] = {}
        for rule in self._matching(job_id, target):
            if rule.worker_resources is not None:
                merged.update(rule.worker_resources.values())
        return merged

    def _matching(self, job_id: str, target: str | None) -> list[ResourceRule]:
        return [rule for rule in self.rules
                if (rule.target is None or rule.target == target)
                and (rule.job_id_glob is None or fnmatch.fnmatchcase(job_id, rule.job_id_glob))]


def _validated(model: type[BaseModel], data: dict[str, Any], source: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {where!r}; remove it or check its spelling") from None
        raise ConfigError(f"{source}: {where}: {err['msg']}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "repx"


def state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "repx"


def load_config(path: Path | None = None) -> Config:
    """`path`, else `$XDG_CONFIG_HOME/repx/config.toml` if it exists, else an empty config."""
    if path is None:
        path = config_home() / "config.toml"
        if not path.exists():
            return Config()
    return _validated(Config, _read_toml(path), str(path))


def load_resources(extra: Path | None = None) -> Resources:
    """Merge the user's resources.toml, ./resources.toml and `extra` (lab-format §8)."""
    merged = Resources()
    candidates = [config_home() / "resources.toml", Path("resources.toml")]
    for path in candidates:
        if path.is_file():
            merged = _merge(merged, _validated(Resources, _read_toml(path), str(path)))
    if extra is not None:
        merged = _merge(merged, _validated(Resources, _read_toml(extra), str(extra)))
    return merged


def _merge(base: Resources, over: Resources) -> Resources:
    defaults = base.defaults.model_copy(update=over.defaults.model_dump(exclude_unset=True))
    return Resources(defaults=defaults, rules=[*base.rules, *over.rules])

