"""State transitions, each one transaction. The engine decides policy (placement, retries);
these functions make the decided change atomically and leave an event behind."""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, replace

from .db import Database
from .records import (
    ACTIVE_JOB_STATES,
    LIVE_ATTEMPT_STATES,
    AgentRecord,
    RunRecord,
)

TERMINAL_JOB_STATES = ("succeeded", "failed", "blocked", "cancelled")
JOB_STATES = ACTIVE_JOB_STATES + TERMINAL_JOB_STATES  # every state a job can be in


def _event(conn, kind: str, run_id: str | None = None, job_id: str | None = None, **detail) -> None:
    conn.execute("INSERT INTO events(ts, kind, run_id, job_id, detail) VALUES (?,?,?,?,?)",
                 (time.time(), kind, run_id, job_id, json.dumps(detail) if detail else None))


@dataclass(slots=True)  # a submit makes one per job: 100,000 for a large Lab
class PlannedJob:
    job_id: str
    deps: list[tuple[str, bool]]  # (dependency in this plan, soft)
    cpus: int
    mem: int
    done: bool  # its SUCCESS marker exists already
    gpus: int = 0
    gpu_optional: bool = False


def create_run(db: Database, run: RunRecord, jobs: list[PlannedJob]) -> RunRecord:
    """Store the run and its jobs. Returns the run as stored, with its jobs counted by state: done
    at once when every job had succeeded already (as a read of it would answer, without the read)."""
    done = {j.job_id for j in jobs if j.done}
    counts: Counter[str] = Counter()
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO runs(id, lab_path, lab_id, selection, target, base_path, options, submitter_uid,"
            " submitter_name, state, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run.id, run.lab_path, run.lab_id, json.dumps(run.selection), run.target, run.base_path,
             json.dumps(run.options), run.submitter_uid, run.submitter_name, "active", run.created))

        def rows():  # made as they are inserted: a list of them was ~25 MB for 100,000 jobs
            for seq, job in enumerate(jobs):
                waiting_on = sum(1 for dep, _soft in job.deps if dep not in done)
                state = "succeeded" if job.done else ("pending" if waiting_on == 0 else "waiting")
                counts[state] += 1
                yield (run.id, job.job_id, run.base_path, state, waiting_on, job.cpus, job.mem, seq, run.created,
                       job.gpus, int(job.gpu_optional))
        conn.executemany("INSERT INTO jobs(run_id, job_id, base_path, state, waiting_on, cpus, mem, seq, ready_at, gpus, gpu_optional)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
        conn.executemany("INSERT INTO job_deps(run_id, job_id, dep_id, soft) VALUES (?,?,?,?)",
                         ((run.id, job.job_id, dep, int(soft)) for job in jobs for dep, soft in job.deps))
        _event(conn, "run.submitted", run.id, jobs=len(jobs), already_succeeded=len(done), by=run.submitter_name)
        stored = replace(run, state="active", finished=None, counts=dict(sorted(counts.items())))
        if not counts["pending"] and not counts["waiting"]:  # its jobs are new: none can have failed
            stored.state, stored.finished = "succeeded", time.time()
            conn.execute("UPDATE runs SET state=?, finished=? WHERE id=?", (stored.state, stored.finished, run.id))
            _event(conn, "run.succeeded", run.id)
    return stored


def _finish_run_if_done(conn, run_id: str) -> None:
    active = conn.execute(f"SELECT count(*) FROM jobs WHERE run_id=? AND state IN {ACTIVE_JOB_STATES}", (run_id,)).fetchone()[0]
    if active:
        return
    run = conn.execute("SELECT state FROM runs WHERE id=?", (run_id,)).fetchone()
    if run is None or run["state"] not in ("active", "cancelling"):
        return
    bad = conn.execute("SELECT count(*) FROM jobs WHERE run_id=? AND state != 'succeeded'", (run_id,)).fetchone()[0]
    state = "cancelled" if run["state"] == "cancelling" else ("failed" if bad else "succeeded")
    conn.execute("UPDATE runs SET state=?, finished=? WHERE id=?", (state, time.time(), run_id))
    _event(conn, f"run.{state}", run_id)


def _block_dependents(conn, run_id: str, job_id: str) -> None:
    queue = deque([job_id])
    while queue:
        current = queue.popleft()
        for row in conn.execute("SELECT job_id, soft FROM job_deps WHERE run_id=? AND dep_id=?", (run_id, current)).fetchall():
            if row["soft"] and current == job_id:
                _release_one(conn, run_id, row["job_id"])
                continue
            changed = conn.execute("UPDATE jobs SET state='blocked', reason=? WHERE run_id=? AND job_id=? AND state IN ('waiting','pending')",
                                   (f"dependency {current} did not succeed", run_id, row["job_id"])).rowcount
            if changed:
                queue.append(row["job_id"])


def _release_one(conn, run_id: str, job_id: str) -> None:
    conn.execute("UPDATE jobs SET waiting_on=waiting_on-1 WHERE run_id=? AND job_id=? AND state='waiting'", (run_id, job_id))
    conn.execute("UPDATE jobs SET state='pending', ready_at=? WHERE run_id=? AND job_id=? AND state='waiting' AND waiting_on<=0",
                 (time.time(), run_id, job_id))


def _settle_job(conn, run_id: str, job_id: str, state: str, reason: str | None) -> None:
    conn.execute("UPDATE jobs SET state=?, reason=? WHERE run_id=? AND job_id=?", (state, reason, run_id, job_id))
    _event(conn, f"job.{state}", run_id, job_id, reason=reason)
    if state == "succeeded":
        for row in conn.execute("SELECT job_id FROM job_deps WHERE run_id=? AND dep_id=?", (run_id, job_id)).fetchall():
            _release_one(conn, run_id, row["job_id"])
    else:
        _block_dependents(conn, run_id, job_id)
        options = json.loads(conn.execute("SELECT options FROM runs WHERE id=?", (run_id,)).fetchone()["options"])
        if state == "failed" and not options.get("continue_on_failure"):
            conn.execute("UPDATE jobs SET state='cancelled', reason='not started: an earlier job failed'"
                         " WHERE run_id=? AND state IN ('waiting','pending')", (run_id,))
    _finish_run_if_done(conn, run_id)


def _settle_execution(conn, base_path: str, job_id: str, state: str, reason: str | None) -> None:
    """Every run waiting on this (base path, job) gets the outcome: content-addressed sharing."""
    rows = conn.execute(f"SELECT run_id FROM jobs WHERE base_path=? AND job_id=? AND state IN {ACTIVE_JOB_STATES}",
                        (base_path, job_id)).fetchall()
    for row in rows:
        _settle_job(conn, row["run_id"], job_id, state, reason)


# ---- scheduling --------------------------------------------------------------------------


def placeable(db: Database, now: float, limit: int) -> list:
    return db.read("SELECT j.run_id, j.job_id, j.base_path, j.cpus, j.mem, j.ready_at, j.gpus, j.gpu_optional, j.reason, r.target"
                   " FROM jobs j JOIN runs r ON r.id=j.run_id"
                   " WHERE j.state='pending' AND j.not_before<=? ORDER BY r.created, j.seq LIMIT ?", (now, limit))


def live_attempt_for(conn, base_path: str, job_id: str):
    return conn.execute(f"SELECT * FROM attempts WHERE base_path=? AND job_id=? AND state IN {LIVE_ATTEMPT_STATES}",
                        (base_path, job_id)).fetchone()


UNSCHEDULABLE = "unschedulable: "


def place(db: Database, decisions: list[tuple], done_on_disk: list[tuple[str, str]]) -> tuple[int, int]:
    """Apply placement decisions (run, job, agent, assigned GPU ids), and settle the pending jobs
    found done on disk (run, job). A decided job another run's live attempt already runs is
    shared with it instead. Returns (attempts created, jobs settled)."""
    created = settled = 0
    now = time.time()
    with db.transaction() as conn:
        for run_id, job_id in done_on_disk:
            if _job_state(conn, run_id, job_id) == "pending":
                _settle_job(conn, run_id, job_id, "succeeded", "already succeeded (SUCCESS marker)")
                settled += 1
        for run_id, job_id, agent_id, assigned in decisions:
            devices = json.dumps(assigned) if assigned else None
            row = conn.execute("SELECT base_path, cpus, mem, state FROM jobs WHERE run_id=? AND job_id=?", (run_id, job_id)).fetchone()
            if row is None or row["state"] != "pending":
                continue
            live = live_attempt_for(conn, row["base_path"], job_id)
            if live is not None:
                conn.execute("UPDATE jobs SET state=? WHERE run_id=? AND job_id=?",
                             ("running" if live["state"] == "running" else "queued", run_id, job_id))
                _event(conn, "job.shared", run_id, job_id, attempt=live["id"])
                continue
            cur = conn.execute("INSERT INTO attempts(run_id, job_id, base_path, agent_id, state, cpus, mem, created, devices)"
                               " VALUES (?,?,?,?,?,?,?,?,?)", (run_id, job_id, row["base_path"], agent_id, "assigned", row["cpus"], row["mem"], now, devices))
            conn.execute("UPDATE jobs SET state='queued', tries=tries+1, reason=CASE WHEN reason LIKE ? THEN NULL ELSE reason END"
                         " WHERE run_id=? AND job_id=?", (UNSCHEDULABLE + "%", run_id, job_id))
            _event(conn, "attempt.assigned", run_id, job_id, attempt=cur.lastrowid, agent=agent_id,
                   **({"devices": assigned} if devices else {}))
            created += 1
    return created, settled


def _job_state(conn, run_id: str, job_id: str) -> str | None:
    row = conn.execute("SELECT state FROM jobs WHERE run_id=? AND job_id=?", (run_id, job_id)).fetchone()
    return row["state"] if row is not None else None


def set_unschedulable(db: Database, updates: list[tuple[str, str, str | None]]) -> None:
    """Say why pending jobs cannot be placed anywhere (None: they can again)."""
    with db.transaction() as conn:
        for run_id, job_id, why in updates:
            conn.execute("UPDATE jobs SET reason=? WHERE run_id=? AND job_id=? AND state='pending'",
                         (UNSCHEDULABLE + why if why else None, run_id, job_id))


def held_devices(db: Database) -> dict[str, set[str]]:
    """agent -> GPU ids its live attempts hold."""
    held: dict[str, set[str]] = {}
    for r in db.read(f"SELECT agent_id, devices FROM attempts WHERE state IN {LIVE_ATTEMPT_STATES} AND devices IS NOT NULL"):
        held.setdefault(r["agent_id"], set()).update(json.loads(r["devices"]))
    return held


def agent_load(db: Database) -> dict[tuple[str, str | None], tuple[int, int, int]]:
    """(agent, run's target) -> (live attempts, cpus held, mem held)."""
    rows = db.read("SELECT a.agent_id, r.target, count(*) n, sum(a.cpus) c, sum(a.mem) m FROM attempts a"
                   f" JOIN runs r ON r.id=a.run_id WHERE a.state IN {LIVE_ATTEMPT_STATES} GROUP BY a.agent_id, r.target")
    return {(r["agent_id"], r["target"]): (r["n"], r["c"] or 0, r["m"] or 0) for r in rows}


def claim(db: Database, agent_id: str, limit: int) -> list[dict]:
    """Hand the agent its assigned attempts (they become running), with what it needs to run them."""
    with db.transaction() as conn:
        rows = conn.execute("SELECT a.*, r.lab_path, r.options, r.target, r.submitter_uid FROM attempts a JOIN runs r ON r.id=a.run_id"
                            " WHERE a.agent_id=? AND a.state='assigned' ORDER BY a.id LIMIT ?", (agent_id, limit)).fetchall()
        now = time.time()
        out = []
        for row in rows:
            conn.execute("UPDATE attempts SET state='running', started=? WHERE id=?", (now, row["id"]))
            conn.execute(f"UPDATE jobs SET state='running' WHERE base_path=? AND job_id=? AND state IN {ACTIVE_JOB_STATES}",
                         (row["base_path"], row["job_id"]))
            _event(conn, "attempt.running", row["run_id"], row["job_id"], attempt=row["id"], agent=agent_id)
            out.append({"attempt": row["id"], "run": row["run_id"], "job": row["job_id"], "base_path": row["base_path"],
                        "lab_path": row["lab_path"], "target": row["target"], "options": json.loads(row["options"]),
                        "cpus": row["cpus"], "mem": row["mem"], "devices": json.loads(row["devices"] or "[]"),
                        "submitter_uid": row["submitter_uid"]})
        return out



def complete_attempt(db: Database, attempt_id: int, outcome: str, exit_status: int | None, reason: str | None,
                     retry: RetryPolicy) -> bool:
    """Record how an attempt ended. Returns False if it had ended already (reported twice)."""
    with db.transaction() as conn:
        att = conn.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        if att is None or att["state"] not in LIVE_ATTEMPT_STATES:
            return False
        if att["state"] == "cancelling" and outcome == "failed":
            outcome = "cancelled"
        conn.execute("UPDATE attempts SET state=?, ended=?, exit_status=?, reason=? WHERE id=?",
                     (outcome, time.time(), exit_status, reason, attempt_id))
        _event(conn, f"attempt.{outcome}", att["run_id"], att["job_id"], attempt=attempt_id, reason=reason)
        if outcome == "succeeded":
            _settle_execution(conn, att["base_path"], att["job_id"], "succeeded", None)
        elif outcome == "cancelled":
            _requeue_or_settle(conn, att, retry, infrastructure=False, reason=reason or "cancelled", cancelled=True)
        else:
            _requeue_or_settle(conn, att, retry, infrastructure=outcome in ("lost", "error"), reason=reason or outcome)
        return True


@dataclass
class RetryPolicy:
    max_lost: int = 3            # attempts lost to infrastructure (agent gone) before giving up
    job_retries: int = 0         # re-runs of a job that failed on its own
    backoff: float = 1.0         # seconds, doubled per try

    def delay(self, tries: int) -> float:
        return min(300.0, self.backoff * 2 ** max(0, tries - 1))


def _requeue_or_settle(conn, att, retry: RetryPolicy, infrastructure: bool, reason: str, cancelled: bool = False) -> None:
    rows = conn.execute(f"SELECT run_id, tries FROM jobs WHERE base_path=? AND job_id=? AND state IN {ACTIVE_JOB_STATES}",
                        (att["base_path"], att["job_id"])).fetchall()
    for row in rows:
        if cancelled:
            user_cancel = conn.execute("SELECT state FROM runs WHERE id=?", (row["run_id"],)).fetchone()["state"] == "cancelling"
            if user_cancel or row["run_id"] == att["run_id"]:
                _settle_job(conn, row["run_id"], att["job_id"], "cancelled", "cancelled by user")
                continue
            conn.execute("UPDATE jobs SET state='pending' WHERE run_id=? AND job_id=?", (row["run_id"], att["job_id"]))
            continue
        limit = retry.max_lost if infrastructure else retry.job_retries + 1
        if row["tries"] < limit:
            not_before = time.time() + retry.delay(row["tries"])
            conn.execute("UPDATE jobs SET state='pending', not_before=?, ready_at=?, reason=? WHERE run_id=? AND job_id=?",
                         (not_before, not_before, f"retrying after: {reason}", row["run_id"], att["job_id"]))
            _event(conn, "job.retry", row["run_id"], att["job_id"], reason=reason, tries=row["tries"])
        else:
            _settle_job(conn, row["run_id"], att["job_id"], "failed", reason)


# ---- agents ------------------------------------------------------------------------------


def register_agent(db: Database, agent_id: str, host: str, inventory: dict, labels: dict, lease: float) -> AgentRecord:
    now = time.time()
    with db.transaction() as conn:
        existing = conn.execute("SELECT state FROM agents WHERE id=?", (agent_id,)).fetchone()
        state = "draining" if existing is not None and existing["state"] == "draining" else "active"
        conn.execute("INSERT INTO agents(id, host, inventory, labels, state, lease_expires, registered, last_seen)"
                     " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET host=excluded.host, inventory=excluded.inventory,"
                     " labels=excluded.labels, state=?, lease_expires=excluded.lease_expires, last_seen=excluded.last_seen",
                     (agent_id, host, json.dumps(inventory), json.dumps(labels), state, now + lease, now, now, state))
        _event(conn, "agent.registered", agent=agent_id, host=host)
        return AgentRecord.from_row(conn.execute("SELECT * FROM agents WHERE id=?", (agent_id,)).fetchone())


UNKNOWN_ATTEMPT_GRACE = 5.0  # a claim's reply may still be on its way to the agent


def heartbeat(db: Database, agent_id: str, lease: float, running: list[int],
              handles: dict[int, str] | None = None) -> tuple[str | None, list[int], list[int]]:
    """Extend the lease and record where new attempts run. Returns the agent's state (None if
    unknown), attempts to cancel, and attempts the store says it runs but it does not know (a
    claim whose reply was lost)."""
    now = time.time()
    with db.transaction() as conn:
        row = conn.execute("SELECT state FROM agents WHERE id=?", (agent_id,)).fetchone()
        if row is None:
            return None, [], []
        state = "active" if row["state"] == "lost" else row["state"]
        conn.execute("UPDATE agents SET lease_expires=?, last_seen=?, state=? WHERE id=?", (now + lease, now, state, agent_id))
        conn.executemany("UPDATE attempts SET handle=? WHERE id=? AND agent_id=?",
                         [(handle, attempt, agent_id) for attempt, handle in (handles or {}).items()])
        cancel = [r["id"] for r in conn.execute("SELECT id FROM attempts WHERE agent_id=? AND state='cancelling'", (agent_id,))]
        known = set(running)
        unknown = [r["id"] for r in conn.execute("SELECT id FROM attempts WHERE agent_id=? AND state='running' AND started<?",
                                                 (agent_id, now - UNKNOWN_ATTEMPT_GRACE)) if r["id"] not in known]
        return state, cancel, unknown


def expire_agents(db: Database, now: float, retry: RetryPolicy) -> int:
    """Agents whose lease lapsed are lost; their live attempts are lost and requeued."""
    with db.transaction() as conn:
        lapsed = [r["id"] for r in conn.execute("SELECT id FROM agents WHERE state!='lost' AND lease_expires<?", (now,))]
        lost = 0
        for agent_id in lapsed:
            conn.execute("UPDATE agents SET state='lost' WHERE id=?", (agent_id,))
            _event(conn, "agent.lost", agent=agent_id)
            for att in conn.execute(f"SELECT * FROM attempts WHERE agent_id=? AND state IN {LIVE_ATTEMPT_STATES}", (agent_id,)).fetchall():
                conn.execute("UPDATE attempts SET state='lost', ended=?, reason=? WHERE id=?", (now, "agent lease expired", att["id"]))
                _event(conn, "attempt.lost", att["run_id"], att["job_id"], attempt=att["id"], agent=agent_id)
                _requeue_or_settle(conn, att, retry, infrastructure=True, reason=f"agent {agent_id} lost")
                lost += 1
        return lost


def set_agent_state(db: Database, agent_id: str, state: str) -> bool:
    with db.transaction() as conn:
        changed = conn.execute("UPDATE agents SET state=? WHERE id=?", (state, agent_id)).rowcount
        if changed:
            _event(conn, f"agent.{state}", agent=agent_id)
        return bool(changed)


def forget_agent(db: Database, agent_id: str) -> bool:
    with db.transaction() as conn:
        live = conn.execute(f"SELECT count(*) FROM attempts WHERE agent_id=? AND state IN {LIVE_ATTEMPT_STATES}", (agent_id,)).fetchone()[0]
        if live:
            return False
        return bool(conn.execute("DELETE FROM agents WHERE id=?", (agent_id,)).rowcount)


# ---- user actions ------------------------------------------------------------------------


def cancel_run(db: Database, run_id: str) -> int:
    """Cancel a run: unstarted jobs are cancelled; its running attempts are asked to stop unless
    another active run shares them. Returns the number of attempts asked to stop."""
    with db.transaction() as conn:
        conn.execute("UPDATE runs SET state='cancelling' WHERE id=? AND state='active'", (run_id,))
        conn.execute("UPDATE jobs SET state='cancelled', reason='cancelled by user' WHERE run_id=? AND state IN ('waiting','pending')", (run_id,))
        stopping = 0
        for job in conn.execute("SELECT job_id, base_path FROM jobs WHERE run_id=? AND state IN ('queued','running')", (run_id,)).fetchall():
            others = conn.execute(f"SELECT count(*) FROM jobs j JOIN runs r ON r.id=j.run_id WHERE j.base_path=? AND j.job_id=?"
                                  f" AND j.run_id!=? AND j.state IN {ACTIVE_JOB_STATES} AND r.state='active'",
                                  (job["base_path"], job["job_id"], run_id)).fetchone()[0]
            if others:
                conn.execute("UPDATE jobs SET state='cancelled', reason='cancelled by user' WHERE run_id=? AND job_id=?", (run_id, job["job_id"]))
                continue
            att = live_attempt_for(conn, job["base_path"], job["job_id"])
            if att is not None and att["state"] == "assigned":
                conn.execute("UPDATE attempts SET state='cancelled', ended=?, reason='cancelled by user' WHERE id=?", (time.time(), att["id"]))
                conn.execute("UPDATE jobs SET state='cancelled', reason='cancelled by user' WHERE run_id=? AND job_id=?", (run_id, job["job_id"]))
            elif att is not None:
                conn.execute("UPDATE attempts SET state='cancelling' WHERE id=?", (att["id"],))
                stopping += 1
        _event(conn, "run.cancel_requested", run_id)
        _finish_run_if_done(conn, run_id)
        return stopping


def retry_run(db: Database, run_id: str) -> int:
    """Put a finished run's failed, blocked and cancelled jobs back in line."""
    with db.transaction() as conn:
        jobs = conn.execute("SELECT job_id FROM jobs WHERE run_id=? AND state IN ('failed','blocked','cancelled')", (run_id,)).fetchall()
        for job in jobs:
            waiting = conn.execute("SELECT count(*) FROM job_deps d JOIN jobs j ON j.run_id=d.run_id AND j.job_id=d.dep_id"
                                   " WHERE d.run_id=? AND d.job_id=? AND j.state!='succeeded'", (run_id, job["job_id"])).fetchone()[0]
            conn.execute("UPDATE jobs SET state=?, waiting_on=?, tries=0, not_before=0, reason=NULL WHERE run_id=? AND job_id=?",
                         ("pending" if waiting == 0 else "waiting", waiting, run_id, job["job_id"]))
        if jobs:
            conn.execute("UPDATE runs SET state='active', finished=NULL WHERE id=?", (run_id,))
            _event(conn, "run.retried", run_id, jobs=len(jobs))
        return len(jobs)


def touch_role(db: Database, name: str, host: str, pid: int, started: float) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO roles(name, host, pid, started, last_seen) VALUES (?,?,?,?,?) ON CONFLICT(name)"
                     " DO UPDATE SET host=excluded.host, pid=excluded.pid, started=excluded.started, last_seen=excluded.last_seen",
                     (name, host, pid, started, time.time()))
