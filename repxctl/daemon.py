"""Commands that talk to a running repx daemon: status, runs, jobs, cancel, retry, agents."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from repxd.errors import RepxError
from repxd.service.daemon_config import SYSTEM_SOCKET, personal_socket
from repxd.store.queries import JOB_STATES

from .table import print_table

if TYPE_CHECKING:
    from repxd.api.client import Api

API_OPTION = click.option("--api", "api_address", envvar="REPX_API",
                          help="The daemon: its socket path or URL (default: $REPX_API, else the system or user socket).")
TOKEN_ENV = "REPX_TOKEN"


def default_api() -> str:
    """The first of the system daemon's socket and the user's own daemon's that a daemon answers
    on; else the first that exists (its daemon stopped: connecting says so); else the user's own."""
    candidates = [SYSTEM_SOCKET, personal_socket()]
    existing = [path for path in candidates if path.exists()]
    for path in existing:
        if _answers(path):
            return str(path)
    return str(existing[0] if existing else candidates[1])


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def connect(api_address: str | None) -> Api:
    # Imported here: the HTTP clients take ~0.4 s to import, which a run with --embedded never needs.
    from repxd.api.client import Api

    return Api(api_address or default_api(), os.environ.get(TOKEN_ENV))


def emit(as_json: bool, data, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(data)


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _counts(counts: dict) -> str:
    return " ".join(f"{state}={n}" for state, n in sorted(counts.items())) or "-"


@click.command()
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
def status(api_address, as_json) -> None:
    """Roles, agents and the queue of the daemon."""
    api = connect(api_address)
    data = api.call("GET", "/v1/status") | {"api": api.address}

    def render(d):
        click.echo(f"{'daemon':<10} {d['api']}")
        for role in d["roles"]:
            click.echo(f"{role['name']:<10} pid {role['pid']} on {role['host']}, seen {role['age']}s ago")
        click.echo(f"agents     {_counts(d['agents'])}")
        click.echo(f"jobs       {_counts(d['jobs'])}")

    emit(as_json, data, render)


@click.command()
@click.argument("run_id", required=False)
@API_OPTION
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many runs (1 to 1000).")
@click.option("--json", "as_json", is_flag=True)
def runs(run_id, api_address, limit, as_json) -> None:
    """Recent runs, or one run in detail when RUN_ID (or a prefix) is given."""
    api = connect(api_address)
    if run_id:
        data = api.call("GET", f"/v1/runs/{run_id}")

        def render(d):
            for key in ("id", "state", "lab_path", "selection", "target", "base_path", "submitter_name"):
                click.echo(f"{key}: {d[key]}")
            if submitted := d["options"].get("submitted_lab"):
                click.echo(f"submitted_lab: {submitted} (read as its submitter into lab_path)")
            click.echo(f"created: {_age(d['created'])}; finished: {_age(d['finished'])}")
            click.echo(f"jobs: {_counts(d['counts'])}")

        emit(as_json, data, render)
        return
    data = api.call("GET", "/v1/runs", params={"limit": limit})
    emit(as_json, data, lambda d: print_table(
        ["RUN", "STATE", "BY", "SUBMITTED", "SELECTION", "JOBS"],
        [[r["id"], r["state"], r["submitter_name"], _age(r["created"]), _selection(r), _counts(r["counts"])] for r in d]))


def _selection(run: dict) -> str:
    """A listing echoes the first entries of a long selection; `repxctl runs RUN` shows it whole."""
    hidden = run.get("selection_count", len(run["selection"])) - len(run["selection"])
    return " ".join(run["selection"]) + (f" (+{hidden} more)" if hidden > 0 else "")


@click.command()
@click.option("--run", "run_id", help="Only this run's jobs.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
def jobs(run_id, state, api_address, as_json) -> None:
    """Jobs the daemon knows, with their state and tries."""
    params = {k: v for k, v in (("run", run_id), ("state", state)) if v}
    data = connect(api_address).listing("/v1/jobs", params)
    emit(as_json, data, lambda d: print_table(["RUN", "JOB", "STATE", "TRIES", "REASON"],
                                              [[j["run_id"], j["job_id"], j["state"], j["attempts"], j["reason"] or ""] for j in d]))


@click.command()
@click.argument("run_id")
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
def cancel(run_id, api_address, as_json) -> None:
    """Cancel a run: unstarted jobs are dropped, running ones stopped (unless another run shares them)."""
    data = connect(api_address).call("POST", f"/v1/runs/{run_id}/cancel")
    emit(as_json, data, lambda d: click.echo(f"run {d['run']}: cancelling; {d['stopping_attempts']} running jobs asked to stop"))


@click.command()
@click.argument("run_id")
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
def retry(run_id, api_address, as_json) -> None:
    """Requeue a run's failed, blocked and cancelled jobs."""
    data = connect(api_address).call("POST", f"/v1/runs/{run_id}/retry")
    emit(as_json, data, lambda d: click.echo(f"run {d['run']}: {d['requeued']} jobs requeued"))


@click.group(invoke_without_command=True)
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agents(ctx, api_address, as_json) -> None:
    """List agents; `agents drain|undrain|forget NAME` changes one."""
    ctx.obj = api_address
    if ctx.invoked_subcommand is None:
        data = connect(api_address).call("GET", "/v1/agents")
        emit(as_json, data, lambda d: print_table(
            ["AGENT", "HOST", "STATE", "RUNNING", "CPUS", "MEM", "LAST SEEN"],
            [[a["id"], a["host"], a["state"], a["running"], a["inventory"].get("cpus", "?"),
              f"{a['inventory'].get('mem', 0) / 2**30:.1f}G", _age(a["last_seen"])] for a in d]))


def _agent_action(name: str, doc: str):
    @agents.command(name, help=doc)
    @click.argument("agent")
    @click.pass_obj
    def command(api_address, agent) -> None:
        api = connect(api_address)
        if name == "forget":
            api.call("DELETE", f"/v1/agents/{agent}")
            click.echo(f"agent {agent} forgotten")
        else:
            data = api.call("POST", f"/v1/agents/{agent}/{name}")
            click.echo(f"agent {agent}: {data['state']}")

    return command


_agent_action("drain", "Stop placing new jobs on AGENT; running jobs finish.")
_agent_action("undrain", "Let AGENT take jobs again.")
_agent_action("forget", "Remove an idle AGENT from the daemon's list.")


def submit(api: Api, lab_path: Path, specs: list[str], target: str | None, options: dict) -> dict:
    if lab_path is None:
        raise RepxError("no Lab given: pass --lab PATH (the directory `nix build` produced), or set REPX_LAB")
    body = {"lab": str(Path(lab_path).resolve()), "selection": specs, "target": target, "options": options}
    return api.call("POST", "/v1/runs", body)
