"""Rows as plain dataclasses: what the store hands to the engine and the API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ACTIVE_JOB_STATES = ("waiting", "pending", "queued", "running")
LIVE_ATTEMPT_STATES = ("assigned", "running", "cancelling")


@dataclass
class RunRecord:
    id: str
    lab_path: str
    lab_id: str
    selection: list[str]
    target: str
    base_path: str
    options: dict[str, Any]
    submitter_uid: int
    submitter_name: str
    state: str
    created: float
    finished: float | None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row) -> RunRecord:
        return cls(row["id"], row["lab_path"], row["lab_id"], json.loads(row["selection"]), row["target"],
                   row["base_path"], json.loads(row["options"]), row["submitter_uid"], row["submitter_name"],
                   row["state"], row["created"], row["finished"])


@dataclass
class JobRecord:
    run_id: str
    job_id: str
    state: str
    tries: int          # the scheduler's retry budget: back to 0 when a user retries the run
    reason: str | None
    attempts: int       # every launch of this job for this run, retries included: what TRIES shows

    @classmethod
    def from_row(cls, row) -> JobRecord:
        return cls(row["run_id"], row["job_id"], row["state"], row["tries"], row["reason"], row["attempts"])


@dataclass
class AttemptRecord:
    id: int
    run_id: str
    job_id: str
    base_path: str
    agent_id: str
    state: str
    handle: str | None
    cpus: int
    mem: int
    created: float
    started: float | None
    ended: float | None
    exit_status: int | None
    reason: str | None
    devices: list[str] = field(default_factory=list)  # GPU ids assigned ("nvidia:0")

    @classmethod
    def from_row(cls, row) -> AttemptRecord:
        data = dict(row)
        data["devices"] = json.loads(data.get("devices") or "[]")
        return cls(**data)


@dataclass
class AgentRecord:
    id: str
    host: str
    inventory: dict[str, Any]
    labels: dict[str, str]
    state: str
    lease_expires: float
    registered: float
    last_seen: float

    @classmethod
    def from_row(cls, row) -> AgentRecord:
        return cls(row["id"], row["host"], json.loads(row["inventory"]), json.loads(row["labels"]), row["state"],
                   row["lease_expires"], row["registered"], row["last_seen"])
