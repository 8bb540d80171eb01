"""config.toml (targets) and resources.toml (lab-format §8–9), with their merge rules.

Unknown keys are errors that name the key and the file."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

ExecutionType = Literal["native", "bwrap", "docker", "podman"]
SchedulerType = Literal["local", "slurm", "sge"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SchedulerSettings(_Strict):
    execution_types: list[ExecutionType] = []
    local_concurrency: int | None = Field(default=None, ge=1)
    poll_interval: float | None = Field(default=None, gt=0)  # an SSH target's status command, once per interval


class SlurmSettings(SchedulerSettings):
    """`[targets.X.slurm]`: upstream's execution_types, and how gently repx talks to SLURM."""

    poll_interval: float = Field(default=5.0, gt=0)  # one status query per interval, for all jobs
    submit_window: float = Field(default=0.5, ge=0)  # ready processes gathered into one sbatch
    array_throttle: int | None = Field(default=None, ge=1)  # `--array=…%N`
    max_array_size: int | None = Field(default=None, ge=1)  # default: the cluster's MaxArraySize
    max_lost: int = Field(default=2, ge=0)  # submissions again after NODE_FAIL, PREEMPTED, ...


class SshSettings(_Strict):
    """`[targets.X.ssh]`: how repx reaches a target with an `address` (upstream has no such table:
    it defers to the system ssh; these name what the system ssh would read from ~/.ssh)."""

    config_file: Path | None = None  # ssh_config for aliases; default ~/.ssh/config
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False  # record an unknown host key instead of refusing it
    identity_file: Path | None = None  # else the agent and the default keys
    credential: str | None = None  # a key in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    keepalive_interval: float = Field(default=15.0, gt=0)
    keepalive_count_max: int = Field(default=3, ge=1)
    connect_timeout: float = Field(default=10.0, gt=0)


class SgeSettings(SchedulerSettings):
    """`[targets.X.sge]`: as `[targets.X.slurm]`, for Grid Engine (SGE/UGE)."""

    poll_interval: float = Field(default=5.0, gt=0)  # one qstat per interval, for all jobs
    submit_window: float = Field(default=0.5, ge=0)  # ready processes gathered into one qsub
    array_throttle: int | None = Field(default=None, ge=1)  # `-tc N`
    max_array_size: int | None = Field(default=None, ge=1)  # default: the cluster's max_aj_tasks
    max_lost: int = Field(default=2, ge=0)  # submissions again after a job failed outside its script
    parallel_environment: str | None = None  # `-pe NAME N` for cpus-per-task; unset: cpus are not asked for


class LoggingSettings(_Strict):
    max_files: int = 50
    max_age_days: int = 7  # upstream's default (repx-core config.rs)


class TargetConfig(_Strict):
    address: str | None = None
    base_path: Path
    node_local_path: Path | None = None
    default_scheduler: SchedulerType | None = None  # then Config.default_scheduler, then "slurm" (upstream)
    default_execution_type: ExecutionType | None = None
    artifact_store: Literal["shared", "node-local"] | None = None
    mount_host_paths: bool = False
    mount_paths: list[str] = []
    local: SchedulerSettings | None = None
    slurm: SlurmSettings | None = None
    ssh: SshSettings | None = None
    sge: SgeSettings | None = None

    @model_validator(mode="after")
    def _local_base_path_is_absolute(self) -> TargetConfig:
        """As upstream's load_config: `~` is expanded; a target without `address` needs an absolute
        base_path (a relative one would depend on the directory repx was started in)."""
        if self.address is None:  # a remote `~` is the remote account's home, not ours
            self.base_path = self.base_path.expanduser()
        if self.node_local_path is not None:
            self.node_local_path = self.node_local_path.expanduser()
        if self.address is None and not self.base_path.is_absolute():
            raise ValueError(f"base_path {str(self.base_path)!r} is relative; local targets need an absolute path or one starting with '~'")
        return self

    def execution_types(self, scheduler: str) -> list[str]:
        settings = getattr(self, scheduler)  # the scheduler's own section: local, slurm, sge
        return list(settings.execution_types) if settings else []


class Config(_Strict):
    theme: str | None = None
    submission_target: str | None = None
    default_scheduler: SchedulerType | None = None
    logging: LoggingSettings = LoggingSettings()
    targets: dict[str, TargetConfig] = {}

    def scheduler_of(self, target: TargetConfig | None) -> str:
        """Upstream (repx-runner lib.rs): the target's default_scheduler, else the top-level one,
        else slurm. Without a configured target we run locally: there is nothing to submit to."""
        if target is None:
            return "local"
        return target.default_scheduler or self.default_scheduler or "slurm"


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
    qsub_opts: list[str] | None = None  # Grid Engine's counterpart of sbatch_opts
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


def wildmatch(pattern: str, text: str) -> bool:
    """Upstream matches `job_id_glob` with the wildmatch crate (2.x, WildMatch::new): `?` is any one
    character, `*` any run of characters (`/` included), everything else literal and case-sensitive
    (no `[...]` classes, no escapes), and the whole id must match. fnmatch would read `[` as a class."""
    p_pos = t_pos = 0
    star_p = star_t = -1
    while t_pos < len(text):
        if p_pos < len(pattern) and pattern[p_pos] in ("?", text[t_pos]):
            p_pos, t_pos = p_pos + 1, t_pos + 1
        elif p_pos < len(pattern) and pattern[p_pos] == "*":
            star_p, star_t = p_pos, t_pos
            p_pos += 1
        elif star_p >= 0:  # let the last `*` swallow one more character and retry
            star_t += 1
            p_pos, t_pos = star_p + 1, star_t
        else:
            return False
    return all(c == "*" for c in pattern[p_pos:])


class Resources(_Strict):
    defaults: ResourceRule = ResourceRule()
    rules: list[ResourceRule] = []
    # Where each value came from, for `show job --resources`: the file that last set each key of
    # [defaults], and the one file whose [[rules]] array survived the merge.
    _defaults_from: dict[str, str] = PrivateAttr(default_factory=dict)
    _rules_from: str | None = PrivateAttr(default=None)

    def for_job(self, job_id: str, hints: dict[str, Any], target: str | None) -> dict[str, Any]:
        """Upstream's resolve_for_job: defaults, then the Lab's hints (`cpus` -> `cpus-per-task`),
        then every matching rule in order."""
        return {key: value for key, (value, _source) in self.explain(job_id, hints, target).items()}

    def explain(self, job_id: str, hints: dict[str, Any], target: str | None) -> dict[str, tuple[Any, str]]:
        """for_job, with the source of each value: `default (FILE)`, `lab hint`, `rule N of FILE`."""
        merged = {key: (value, f"default ({self._defaults_from.get(key, 'resources')})")
                  for key, value in self.defaults.values().items()}
        for key, value in hints.items():
            merged["cpus-per-task" if key == "cpus" else key] = (value, "lab hint")
        for number, rule in self._matching(job_id, target):
            merged.update({key: (value, f"rule {number} of {self._rules_from or 'resources'}")
                           for key, value in rule.values().items()})
        return merged

    def worker_for(self, job_id: str, hints: dict[str, Any], target: str | None,
                   step_hints: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resources of a scatter-gather step, as upstream's resolve_worker_resources: the job's own,
        then the step's hints from the Lab, then the `worker_resources` of the LAST matching rule
        only (earlier rules' are ignored; a last match without one leaves the rest)."""
        return step_resources(self.for_job(job_id, hints, target), step_hints or {}, self.worker_overlay(job_id, target))

    def worker_overlay(self, job_id: str, target: str | None) -> dict[str, Any]:
        """The last matching rule's `worker_resources`, laid over every step of the job."""
        matching = self._matching(job_id, target)
        if matching and matching[-1][1].worker_resources is not None:
            return matching[-1][1].worker_resources.values()
        return {}

    def _matching(self, job_id: str, target: str | None) -> list[tuple[int, ResourceRule]]:
        """(1-based number in its file, rule) for each rule that applies to `job_id` on `target`."""
        return [(number, rule) for number, rule in enumerate(self.rules, 1)
                if (rule.target is None or rule.target == target)
                and (rule.job_id_glob is None or wildmatch(rule.job_id_glob, job_id))]


def step_resources(job: dict[str, Any], step_hints: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(job)
    for key, value in step_hints.items():
        merged["cpus-per-task" if key == "cpus" else key] = value
    merged.update(overlay)
    return merged


def _validated(model: type[BaseModel], data: dict[str, Any], source: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {where!r}; remove it or check its spelling") from None
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {where}: {message}") from None


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
        try:
            if not path.exists():
                return Config()
        except OSError as exc:  # e.g. another user's HOME left in the environment
            raise ConfigError(f"{path}: cannot read ({exc.strerror}); check HOME/XDG_CONFIG_HOME, or pass --config") from None
    return _validated(Config, _read_toml(path), str(path))


def load_resources(extra: Path | None = None) -> Resources:
    """The user's resources.toml, then ./resources.toml, then `extra` (a missing `extra` is an error),
    merged as upstream's config.rs merge_toml_values: tables key by key, anything else — the
    `rules` array included — replaced whole by the later file."""
    candidates = [path for path in (config_home() / "resources.toml", Path("resources.toml")) if path.is_file()]
    if extra is not None:
        candidates.append(extra)  # _read_toml names it when it cannot be read
    merged: dict[str, Any] = {}
    defaults_from: dict[str, str] = {}
    rules_from = None
    for path in candidates:
        data = _read_toml(path)
        _validated(Resources, data, str(path))  # errors name the file that has them
        _merge_toml(merged, data)
        defaults_from.update(dict.fromkeys(data.get("defaults", {}), str(path.absolute())))
        if "rules" in data:
            rules_from = str(path.absolute())
    resources = _validated(Resources, merged, " + ".join(map(str, candidates)))
    resources._defaults_from = {("cpus-per-task" if k == "cpus_per_task" else k): v for k, v in defaults_from.items()}
    resources._rules_from = rules_from
    return resources


def _merge_toml(into: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_toml(into[key], value)
        else:
            into[key] = value
