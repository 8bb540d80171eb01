"""Request bodies of the API (pydantic at the boundary)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitOptions(_Body):
    continue_on_failure: bool = False
    runtime: Literal["native", "bwrap", "podman", "docker"] | None = None
    no_verify: bool = False


class SubmitRequest(_Body):
    lab: str = Field(min_length=1)
    # Run names, job-id prefixes and group names: short words, a bounded number of them.
    selection: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(min_length=1, max_length=10_000)
    target: str | None = None
    options: SubmitOptions = Field(default_factory=SubmitOptions)  # no copy of a default per request


class RegisterRequest(_Body):
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.@:-]+$")
    host: str
    inventory: dict = {}
    labels: dict[str, str] = {}


class HeartbeatRequest(_Body):
    running: list[int] = []
    handles: dict[int, str] = {}  # where attempts started since the last heartbeat run (pid:N, unit:NAME)


class ClaimRequest(_Body):
    max: int = Field(default=16, ge=1, le=1000)
    wait: float = Field(default=20.0, ge=0, le=60)


class ReportRequest(_Body):
    outcome: Literal["succeeded", "failed", "cancelled", "error"]  # error: the agent's fault, retried
    exit_status: int | None = None
    reason: str | None = None


class AttemptReport(ReportRequest):
    attempt: int


class ReportsRequest(_Body):
    """Several attempts' reports in one call: an agent sends what ended while its last call was
    under way, so a busy agent makes one request for many jobs. `claim`: the answer also carries
    up to this many attempts placed on the agent meanwhile (waiting up to `wait` seconds for
    them), for the slots the reported attempts held: one request instead of a report and a claim."""
    reports: list[AttemptReport] = Field(min_length=1, max_length=1000)
    claim: int = Field(default=0, ge=0, le=1000)
    wait: float = Field(default=0.0, ge=0, le=1)

