"""What `repxctl top` watches: the daemon (through its API) or an embedded base path (through
its output layout: completion markers and completions.jsonl). Both give the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repxd.exec.layout import FAIL, SUCCESS, OutputLayout

LOG_TAIL_LINES = 20
EMBEDDED_RUN = "(base path)"


@dataclass
class RunRow:
    id: str
    state: str
    counts: str


@dataclass
class JobRow:
    job_id: str
    stage: str
    state: str
    tries: int
    reason: str


def stage_of(job_id: str) -> str:
    return job_id.partition("-")[2] or job_id


class DaemonSource:
    def __init__(self, api) -> None:
        self.api = api
        self.where = f"daemon at {api.address}"

    def runs(self) -> list[RunRow]:
        return [RunRow(r["id"], r["state"], " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items())))
                for r in self.api.call("GET", "/v1/runs")]

    def jobs(self, run_id: str) -> list[JobRow]:
        return [JobRow(j["job_id"], stage_of(j["job_id"]), j["state"], j["tries"], j["reason"] or "")
                for j in self.api.call("GET", f"/v1/runs/{run_id}/jobs")]

    def log_tail(self, job_id: str) -> str:
        with self.api.stream(f"/v1/jobs/{job_id}/log", {"stream": "stderr", "tail": LOG_TAIL_LINES}) as response:
            return response.read().decode(errors="replace")

    def cancel(self, run_id: str) -> str:
        self.api.call("POST", f"/v1/runs/{run_id}/cancel")
        return f"cancelling run {run_id}"

    def retry(self, run_id: str) -> str:
        self.api.call("POST", f"/v1/runs/{run_id}/retry")
        return f"retrying the failed jobs of run {run_id}"

    def drain(self) -> str:
        agents = [a["id"] for a in self.api.call("GET", "/v1/agents")]
        for agent in agents:
            self.api.call("POST", f"/v1/agents/{agent}/drain")
        return f"draining {', '.join(agents) or 'no agents'}"


class EmbeddedSource:
    """A base path written by embedded runs: every job directory under outputs/, its state from
    its markers; a job with a log but no marker is running (or was stopped)."""

    def __init__(self, base: Path) -> None:
        self.layout = OutputLayout(base)
        self.where = f"base path {base}"

    def runs(self) -> list[RunRow]:
        jobs = self.jobs(EMBEDDED_RUN)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        return [RunRow(EMBEDDED_RUN, "-", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))]

    def jobs(self, run_id: str) -> list[JobRow]:
        outputs = self.layout.outputs
        rows = []
        for job_dir in sorted(outputs.iterdir()) if outputs.is_dir() else []:
            if not job_dir.is_dir():
                continue
            repx = self.layout.repx_dir(job_dir.name)
            if (repx / SUCCESS).exists():
                state = "succeeded"
            elif (repx / FAIL).exists():
                state = "failed"
            elif (repx / "stderr.log").exists():
                state = "running"
            else:
                state = "pending"
            rows.append(JobRow(job_dir.name, stage_of(job_dir.name), state, 0, ""))
        return rows

    def log_tail(self, job_id: str) -> str:
        log = self.layout.repx_dir(job_id) / "stderr.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        except FileNotFoundError:
            return "(no log yet)"

    def cancel(self, run_id: str) -> str:
        return "cancel needs the daemon: an embedded run is cancelled with Ctrl-C where it runs"

    retry = cancel

    def drain(self) -> str:
        return "drain needs the daemon: embedded runs have no agents"
