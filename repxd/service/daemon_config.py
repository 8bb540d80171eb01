"""/etc/repx/repxd.toml: listeners, state, targets, resources, auth, metrics, logging.

`repxd check-config FILE` reports every error with its key."""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..user_config import Config, Resources, TargetConfig, parse_memory
from ..user_config import SchedulerSettings as TargetSchedulerSettings

DEFAULT_CONFIG = Path("/etc/repx/repxd.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


HOST = re.compile(r"[A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]")


def _listen_address(value: str | None) -> str | None:
    """"host:port" as the listeners bind it (an empty host is 127.0.0.1); checked here so that
    check-config, not the daemon's start, finds a bad one. Empty turns the listener off."""
    if not value:
        return value
    host, colon, port = value.rpartition(":")
    if not colon or not HOST.fullmatch(host) or not port.isascii() or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8420)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} in {value!r} is out of range (1 to 65535)")
    return value


def _memory(value: str | None) -> str | None:
    if value is not None:
        parse_memory(value)  # its ValueError names the value and the forms it takes
    return value


ListenAddress = Annotated[str | None, AfterValidator(_listen_address)]
Memory = Annotated[str | None, AfterValidator(_memory)]


SYSTEM_RUNTIME_DIR = Path("/run/repx")
SYSTEM_SOCKET = SYSTEM_RUNTIME_DIR / "api.sock"


def personal_socket() -> Path:
    """The socket of a user's own daemon (`repxd all` on a laptop)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/repx-{os.getuid()}"
    return Path(runtime) / "repx" / "api.sock"


def system_daemon() -> bool:
    """The one rule for a daemon's default paths and ports. A system daemon: started by systemd
    (the shipped units set RUNTIME_DIRECTORY/STATE_DIRECTORY), run as the service user who owns
    /run/repx, or run as root outside a login session (no XDG_RUNTIME_DIR). Any other daemon —
    root in a login session included — is a personal one, on the user's XDG paths, so it never
    takes over the system daemon's socket or store. [api] socket, state_dir and the metrics keys
    override the defaults either way."""
    if os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("STATE_DIRECTORY"):
        return True
    try:
        if SYSTEM_RUNTIME_DIR.stat().st_uid == os.geteuid() != 0:
            return True
    except OSError:
        pass
    return os.geteuid() == 0 and not os.environ.get("XDG_RUNTIME_DIR")


def default_socket() -> Path:
    return SYSTEM_SOCKET if system_daemon() else personal_socket()


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):  # systemd's StateDirectory= (the shipped units: /var/lib/repx)
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if system_daemon():
        return Path("/var/lib/repx")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "repx" / "daemon"


def default_metrics(port: int) -> str | None:
    """A system daemon's role serves /metrics on its fixed port; a personal daemon binds no TCP
    port by default (two users' daemons would collide): its socket's /metrics has every role's."""
    return f"127.0.0.1:{port}" if system_daemon() else None


class ApiSettings(_Strict):
    socket: Path = Field(default_factory=default_socket)
    socket_mode: int = 0o666  # access is decided per request from the peer's credentials
    tcp: ListenAddress = None  # "host:port"; needs tokens
    allowed_groups: list[str] = []  # empty: every local user may submit
    admin_groups: list[str] = []
    agent_token_file: Path | None = None
    admin_token_file: Path | None = None
    metrics_token_file: Path | None = None  # a token that reads TCP /metrics and nothing else (Prometheus)


class SchedulerSettings(_Strict):
    poll_interval: float = Field(default=0.2, gt=0)
    lease_seconds: float = Field(default=15.0, gt=0)
    max_lost: int = Field(default=3, ge=1)
    job_retries: int = Field(default=0, ge=0)
    backoff: float = Field(default=1.0, ge=0)
    metrics: ListenAddress = Field(default_factory=lambda: default_metrics(9421))


class AgentSettings(_Strict):
    id: str = Field(default_factory=socket.gethostname)
    api: str | None = None  # socket path or URL; default: the api socket
    token_file: Path | None = None
    slots: int | None = Field(default=None, ge=1)
    cpus: int | None = Field(default=None, ge=1)
    mem: Memory = None
    labels: dict[str, str] = {}
    # The hardware inventory: a file (default: /run/repx/hardware.json when written this boot, else
    # detected at start), or a root prefix to detect under (a recorded tree) with recorded tool outputs.
    hardware_file: Path | None = None
    hardware_root: Path | None = None
    hardware_tools: Path | None = None
    heartbeat_interval: float = Field(default=2.0, gt=0)
    metrics: ListenAddress = Field(default_factory=lambda: default_metrics(9422))
    # How jobs start: transient systemd units where the system bus allows it ("auto"), or always.
    launcher: Literal["auto", "systemd", "subprocess"] = "auto"
    # Jobs of token callers (who have no uid) run as this user; default `nobody` where the agent
    # can switch users (as root, or through systemd units).
    job_user: str | None = None
    # Jobs of socket submissions run as the user who submitted them.
    run_as_submitter: bool = True
    # Only by an administrator's explicit choice may a job run as the agent's own user (warned at every start).
    allow_jobs_as_daemon_user: bool = False
    # A scatter's work items become processes and directories each: beyond this a stage fails
    # rather than exhaust the daemon's memory (50,000 items once took it to 2 GB).
    max_work_items: int = Field(default=10_000, ge=1, le=1_000_000)
    # Jobs this agent keeps submitted to each cluster target (SLURM) at once.
    cluster_slots: int = Field(default=10_000, ge=1)


class Settings(_Strict):
    state_dir: Path = Field(default_factory=default_state_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_journald: bool | None = None  # default: when started by systemd (JOURNAL_STREAM)
    # Factories: the defaults follow system_daemon() when the settings are read, not at import.
    api: ApiSettings = Field(default_factory=ApiSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    targets: dict[str, TargetConfig] = {}
    resources: Resources = Resources()

    def target_config(self) -> Config:
        """The daemon's targets as a user config. Two defaults differ from upstream's CLI, as the
        module documents them: a target without default_scheduler is local (the daemon runs jobs
        on its own agents), and a default_execution_type without a `local` section is used (upstream
        would run natively — silently dropping the sandbox an admin asked for)."""
        targets = {name: target if target.local is not None or target.default_execution_type is None
                   else target.model_copy(update={"local": TargetSchedulerSettings(execution_types=[target.default_execution_type])})
                   for name, target in self.targets.items()}
        return Config(targets=targets, default_scheduler="local")

    @property
    def database(self) -> Path:
        return self.state_dir / "state.db"


def validation_errors(exc: ValidationError, source: str) -> list[str]:
    messages = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            messages.append(f"{source}: unknown key {where!r}")
        else:
            messages.append(f"{source}: {where}: {err['msg'].removeprefix('Value error, ')}")
    return messages


def load_settings(path: Path | None) -> Settings:
    """The file at `path`, else /etc/repx/repxd.toml when it exists, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Settings()
        path = DEFAULT_CONFIG
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc, str(path))
        raise ConfigError("; ".join(errors) if len(errors) < 4 else f"{errors[0]} (and {len(errors) - 1} more; run `repxd check-config {path}`)") from None


def readable_by_everyone(path: Path) -> bool:
    """Whether any local user can read `path`: it is world-readable and so is the way to it."""
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.absolute().parents)
    except OSError:
        return False


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"token file {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path} is not text; write the token on one line") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    if readable_by_everyone(path):
        raise ConfigError(f"token file {path} is readable by every local user; chmod 600 it (or o-r)")
    return token


def token_files(settings: Settings) -> dict[str, Path]:
    """The token files the configuration names, by key."""
    named = {"api.agent_token_file": settings.api.agent_token_file, "api.admin_token_file": settings.api.admin_token_file,
             "api.metrics_token_file": settings.api.metrics_token_file, "agent.token_file": settings.agent.token_file}
    return {key: path for key, path in named.items() if path is not None}


def token_file_errors(settings: Settings, source: str) -> list[str]:
    """What the daemon would refuse about the token files at start, one message per file."""
    messages = []
    for key, path in token_files(settings).items():
        try:
            read_token(path)
        except ConfigError as exc:
            messages.append(f"{source}: {key}: {exc}")
    return messages
