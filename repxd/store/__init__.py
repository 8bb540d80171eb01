"""Persistent state in SQLite (WAL): runs, jobs, attempts, agents, events."""

from .db import Database, open_database
from .records import AgentRecord, AttemptRecord, JobRecord, RunRecord

__all__ = ["AgentRecord", "AttemptRecord", "Database", "JobRecord", "RunRecord", "open_database"]
