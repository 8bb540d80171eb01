"""Versioned schema migrations. Append only: a released migration is never edited."""

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        lab_path TEXT NOT NULL,
        lab_id TEXT NOT NULL,
        selection TEXT NOT NULL,          -- JSON list of selectors
        target TEXT NOT NULL,
        base_path TEXT NOT NULL,
        options TEXT NOT NULL,            -- JSON: runtime, continue_on_failure, retry policy
        submitter_uid INTEGER NOT NULL,
        submitter_name TEXT NOT NULL,
        state TEXT NOT NULL,              -- active | succeeded | failed | cancelled
        created REAL NOT NULL,
        finished REAL
    );
    CREATE TABLE jobs (
        run_id TEXT NOT NULL REFERENCES runs(id),
        job_id TEXT NOT NULL,
        base_path TEXT NOT NULL,
        state TEXT NOT NULL,              -- waiting | pending | queued | running | succeeded | failed | blocked | cancelled
        waiting_on INTEGER NOT NULL,      -- dependencies in this run not yet succeeded
        cpus INTEGER NOT NULL DEFAULT 1,
        mem INTEGER NOT NULL DEFAULT 0,
        tries INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        ready_at REAL,                    -- when it last became placeable (dispatch latency)
        reason TEXT,
        seq INTEGER NOT NULL,             -- topological position, for FIFO placement
        PRIMARY KEY (run_id, job_id)
    );
    CREATE INDEX jobs_by_state ON jobs(state, run_id, seq);
    CREATE INDEX jobs_by_execution ON jobs(base_path, job_id);
    CREATE TABLE job_deps (
        run_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        dep_id TEXT NOT NULL,
        soft INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, dep_id, job_id)
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        base_path TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        state TEXT NOT NULL,              -- assigned | running | cancelling | succeeded | failed | lost | cancelled
        handle TEXT,                      -- where it runs: pid, unit name, later a SLURM id
        cpus INTEGER NOT NULL DEFAULT 1,
        mem INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        exit_status INTEGER,
        reason TEXT
    );
    CREATE INDEX attempts_by_state ON attempts(state, agent_id);
    CREATE INDEX attempts_by_execution ON attempts(base_path, job_id, state);
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        inventory TEXT NOT NULL,          -- JSON: cpus, mem, ...
        labels TEXT NOT NULL,             -- JSON object
        state TEXT NOT NULL,              -- active | draining | lost
        lease_expires REAL NOT NULL,
        registered REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT,
        job_id TEXT,
        detail TEXT
    );
    CREATE INDEX events_by_run ON events(run_id, id);
    CREATE TABLE roles (
        name TEXT PRIMARY KEY,            -- api | scheduler
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    """,
    # 2: GPUs. A job's request, and the devices an attempt was assigned
    """
    ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN gpu_optional INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN devices TEXT
    """,
]
