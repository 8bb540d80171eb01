"""Who may do what: real Unix users on the API socket, bearer tokens on TCP.

Needs root: the tests create the system users repxt-alice and repxt-bob (members of the group
repxt-users) and repxt-carol (not a member), run repxctl as them with setpriv, and remove the
users and the group afterwards. Not root: skip, or fail with REPX_REQUIRE_SYSTEM_TESTS=1."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cli import Result
from conftest import missing, require_program
from service import Daemon

GROUP = "repxt-users"
MEMBERS = ("repxt-alice", "repxt-bob")
OUTSIDER = "repxt-carol"
ALICE, BOB = MEMBERS
ALLOWED = f'allowed_groups = ["{GROUP}"]\n'

# The interpreter the tests run under, so the users run the same installation of repxctl.
REPXCTL = Path(sys.executable).with_name("repxctl")

# Requests over the API socket as whoever runs this; prints [[status, error], ...].
REQUESTS = """
import json, sys, httpx
with httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), base_url="http://repx") as client:
    out = []
    for method, path, body in json.loads(sys.argv[2]):
        response = client.request(method, path, json=body)
        out.append([response.status_code, response.json().get("error") if response.status_code >= 400 else None])
print(json.dumps(out))
"""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    prefix: tuple[str, ...]  # the command line that runs a program as this user

    def run(self, *argv: object, env: dict[str, str]) -> Result:
        proc = subprocess.run([*self.prefix, *map(str, argv)], capture_output=True, text=True, env=env, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def repxctl(self, *args: object, api: Path | str, token: str | None = None) -> Result:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", "REPX_API": str(api)}
        if token:
            env["REPX_TOKEN"] = token
        return self.run(REPXCTL, *args, env=env)

    def requests(self, socket: Path, calls: list[tuple[str, str, dict | None]]) -> list[tuple[int, str | None]]:
        result = self.run(sys.executable, "-c", REQUESTS, socket, json.dumps(calls), env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
        assert result.code == 0, result.stderr
        return [tuple(r) for r in json.loads(result.stdout)]


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    return subprocess.run(["getent", "group", name], capture_output=True).returncode == 0


def _remove_accounts() -> None:
    """Remove this module's users (their personal groups go with them) and its group."""
    for name in (*MEMBERS, OUTSIDER):
        if _exists(name):
            subprocess.run(["userdel", name], capture_output=True)
        if _group_exists(name):
            subprocess.run(["groupdel", name], capture_output=True)
    if _group_exists(GROUP):
        subprocess.run(["groupdel", GROUP], capture_output=True)


def _prefix(name: str) -> tuple[str, ...]:
    """setpriv to the user with its groups. When the interpreter is out of the user's reach (a
    Python under root's 0700 home, as with pyenv on this machine), the user keeps only
    CAP_DAC_READ_SEARCH to read it; the API decides by uid and groups, which stay the user's."""
    entry = pwd.getpwnam(name)
    plain = ("setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--")
    if subprocess.run([*plain, REPXCTL, "--version"], capture_output=True).returncode == 0:
        return plain
    reading = (*plain[:-1], "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--")
    probe = subprocess.run([*reading, REPXCTL, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"cannot run {REPXCTL} as {name}: {probe.stderr.strip()}")
    return reading


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        missing("the auth tests need root (they create Unix users)")
    for program in ("useradd", "userdel", "groupadd", "groupdel", "setpriv", "getent"):
        require_program(program)
    if not REPXCTL.exists():
        pytest.fail(f"{REPXCTL} is missing; install the package (pip install -e .)")
    _remove_accounts()  # left over from an interrupted session: the names are this module's
    try:
        commands = [["groupadd", "--system", GROUP]]
        for name in (*MEMBERS, OUTSIDER):
            groups = ["--groups", GROUP] if name in MEMBERS else []
            commands.append(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", *groups, name])
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                missing(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
        made = {}
        for name in (*MEMBERS, OUTSIDER):
            entry = pwd.getpwnam(name)
            made[name] = User(name, entry.pw_uid, entry.pw_gid, _prefix(name))
        yield made
    finally:
        _remove_accounts()


# Whoever runs the tests: root for the user tests, and the daemon's own user (an administrator).
SELF = User("self", os.geteuid(), os.getegid(), ())


@pytest.fixture(scope="module")
def lab():
    """A Lab with one slow job, in a directory every user can read (tmp_path is 0700)."""
    from repxd.lab.writer import LabWriter

    where = Path(tempfile.mkdtemp(prefix="repx-auth-lab-"))
    where.chmod(0o755)
    writer = LabWriter()
    writer.run("slow").job("slow", "#!/bin/sh\nsleep 30\n", outputs={"x": "$out/x"})
    yield writer.write(where / "lab")
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def make(role: str, **kw) -> Daemon:
        d = Daemon.create(**kw)
        started.append(d)
        d.start(role)
        return d

    yield make
    for d in started:
        d.stop()


def refused(result: Result, *phrases: str) -> None:
    """A user error: exit 2 and one line saying why."""
    assert result.code == 2, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("repxctl: error: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def show(d: Daemon, run_id: str) -> dict:
    result = SELF.repxctl("runs", run_id, "--json", api=d.socket)
    assert result.code == 0, result.stderr
    return result.json()


def wait_for(d: Daemon, run_id: str, check, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while not check(run := show(d, run_id)):
        assert time.monotonic() < deadline, f"run {run_id} never {what}: {run}\n{d.logs()}"
        time.sleep(0.1)
    return run


def submit(user: User, d: Daemon, lab: Path, api: Path | str | None = None, token: str | None = None) -> str:
    result = user.repxctl("run", "slow", "--lab", lab, "--detach", api=api or d.socket, token=token)
    assert result.code == 0, result.stderr + d.logs()
    return result.stdout.strip()


def test_users_cancel_and_retry_only_their_own_runs(users, lab, daemons):
    alice, bob = users[ALICE], users[BOB]
    d = daemons("all", api_extra=ALLOWED)
    run_id = submit(alice, d, lab)
    run = wait_for(d, run_id, lambda r: r["counts"] == {"running": 1}, "started")
    assert (run["submitter_name"], run["submitter_uid"]) == (ALICE, alice.uid)

    # Anyone may look; bob may not touch alice's run.
    seen = bob.repxctl("runs", "--json", api=d.socket)
    assert seen.code == 0 and [r["id"] for r in seen.json()] == [run_id]
    refused(bob.repxctl("cancel", run_id, api=d.socket),
            f"{BOB} may not cancel", ALICE, "users may cancel only their own runs")
    refused(bob.repxctl("retry", run_id, api=d.socket), f"{BOB} may not retry", "users may retry only their own runs")
    assert show(d, run_id)["counts"] == {"running": 1}

    # Alice may cancel and retry her own.
    cancelled = alice.repxctl("cancel", run_id, api=d.socket)
    assert cancelled.code == 0 and cancelled.stdout == f"run {run_id}: cancelling; 1 running jobs asked to stop\n", cancelled
    run = wait_for(d, run_id, lambda r: r["done"], "finished")
    assert run["state"] == "cancelled" and run["counts"] == {"cancelled": 1}
    retried = alice.repxctl("retry", run_id, api=d.socket)
    assert retried.code == 0 and retried.stdout == f"run {run_id}: 1 jobs requeued\n", retried
    wait_for(d, run_id, lambda r: r["counts"] == {"running": 1}, "restarted")

    # Root is an administrator: it may cancel and retry anyone's run.
    assert SELF.repxctl("cancel", run_id, api=d.socket).code == 0
    assert wait_for(d, run_id, lambda r: r["done"], "finished")["state"] == "cancelled"
    again = SELF.repxctl("retry", run_id, "--json", api=d.socket)
    assert again.code == 0 and again.json()["requeued"] == 1
    assert SELF.repxctl("cancel", run_id, api=d.socket).code == 0
    wait_for(d, run_id, lambda r: r["done"], "finished")


def test_submitting_needs_an_allowed_group(users, lab, daemons):
    alice, carol = users[ALICE], users[OUTSIDER]
    d = daemons("api", api_extra=ALLOWED)
    refused(carol.repxctl("run", "slow", "--lab", lab, "--detach", api=d.socket),
            f"{OUTSIDER} may not submit runs: not a member of the allowed groups ({GROUP})")
    run_id = submit(alice, d, lab)
    refused(carol.repxctl("cancel", run_id, api=d.socket), "users may cancel only their own runs")
    assert SELF.repxctl("runs", "--json", api=d.socket).json()[0]["id"] == run_id  # carol's was not recorded


def test_admin_groups_act_on_any_run(users, lab, daemons):
    """carol is in no allowed group, but her own group (primary, from useradd --user-group) is an admin group."""
    alice, carol = users[ALICE], users[OUTSIDER]
    d = daemons("api", api_extra=ALLOWED + f'admin_groups = ["{OUTSIDER}"]\n')
    run_id = submit(alice, d, lab)
    assert carol.repxctl("cancel", run_id, api=d.socket).code == 0
    assert show(d, run_id)["counts"] == {"cancelled": 1}
    assert carol.repxctl("retry", run_id, api=d.socket).code == 0
    assert submit(carol, d, lab) != run_id
    assert SELF.requests(d.socket, [("POST", "/v1/agents", {"id": "agent-x", "host": "elsewhere"})]) == [(200, None)]
    refused(alice.repxctl("agents", "drain", "agent-x", api=d.socket),
            "changing an agent needs an administrator", f"{ALICE} is not one")
    drained = carol.repxctl("agents", "drain", "agent-x", api=d.socket)
    assert drained.code == 0 and drained.stdout == "agent agent-x: draining\n", drained


def test_agent_endpoints_refuse_users_on_the_socket(users, daemons):
    alice = users[ALICE]
    d = daemons("api")
    calls = [("POST", "/v1/agents", {"id": "agent-x", "host": "laptop"}),
             ("POST", "/v1/agents/agent-x/heartbeat", {}),
             ("POST", "/v1/agents/agent-x/claim", {"wait": 0}),
             ("GET", "/v1/attempts/1", None),
             ("POST", "/v1/attempts/1/report", {"outcome": "succeeded", "exit_status": 0}),
             ("POST", "/v1/agents/agent-x/reports", {"reports": [{"attempt": 1, "outcome": "succeeded"}]})]
    not_agent = f"only agents may use this endpoint; {ALICE} is not an agent"
    assert alice.requests(d.socket, calls) == [(403, not_agent)] * len(calls)
    # The daemon's own user (root here) is an agent on the socket.
    assert SELF.requests(d.socket, calls[:3]) == [(200, None)] * 3
    listed = alice.repxctl("agents", "--json", api=d.socket)
    assert listed.code == 0 and [a["id"] for a in listed.json()] == ["agent-x"]
    refused(alice.repxctl("agents", "drain", "agent-x", api=d.socket), "changing an agent needs an administrator")
    refused(alice.repxctl("agents", "forget", "agent-x", api=d.socket), "forgetting an agent needs an administrator")


def test_tcp_tokens(lab, daemons, tmp_path):
    tokens = {}
    for kind in ("agent", "admin"):
        tokens[kind] = f"{kind}-{os.urandom(16).hex()}"
        (tmp_path / kind).write_text(tokens[kind] + "\n")
        (tmp_path / kind).chmod(0o600)
    d = daemons("api", tcp=True, api_extra=f'agent_token_file = "{tmp_path / "agent"}"\nadmin_token_file = "{tmp_path / "admin"}"\n')
    url = f"http://127.0.0.1:{d.ports['api']}"
    agent = {"Authorization": f"Bearer {tokens['agent']}"}

    # Without a token (or a wrong one) nothing but health.
    denied = httpx.get(f"{url}/v1/runs")
    assert denied.status_code == 401 and "bearer token" in denied.json()["error"]
    assert denied.headers["WWW-Authenticate"] == "Bearer"
    refused(SELF.repxctl("runs", api=url), "this TCP listener needs a bearer token")
    refused(SELF.repxctl("runs", api=url, token="wrong"), "the bearer token is not valid for this daemon")
    refused(SELF.repxctl("run", "slow", "--lab", lab, "--detach", api=url), "bearer token")

    # The agent token serves agents: register, heartbeat, claim.
    registered = httpx.post(f"{url}/v1/agents", headers=agent, json={"id": "remote-1", "host": "elsewhere"})
    assert registered.status_code == 200 and registered.json()["agent"]["id"] == "remote-1"
    assert httpx.post(f"{url}/v1/agents/remote-1/heartbeat", headers=agent, json={}).json()["state"] == "active"
    assert httpx.post(f"{url}/v1/agents/remote-1/claim", headers=agent, json={"wait": 0}).json() == []

    # ... and nothing else that changes runs or agents, whoever submitted the run.
    by_root = submit(SELF, d, lab)
    by_admin_token = submit(SELF, d, lab, api=url, token=tokens["admin"])
    for run_id in (by_root, by_admin_token):
        refused(SELF.repxctl("cancel", run_id, api=url, token=tokens["agent"]), "agent-token may not cancel")
        refused(SELF.repxctl("retry", run_id, api=url, token=tokens["agent"]), "may not retry")
        assert show(d, run_id)["state"] == "active"
    refused(SELF.repxctl("run", "slow", "--lab", lab, "--detach", api=url, token=tokens["agent"]),
            "agent-token may not submit runs: the agent token only serves agents")
    refused(SELF.repxctl("agents", "drain", "remote-1", api=url, token=tokens["agent"]),
            "changing an agent needs an administrator")

    # The admin token may do everything.
    listed = SELF.repxctl("runs", "--json", api=url, token=tokens["admin"])
    assert listed.code == 0 and {r["id"] for r in listed.json()} == {by_root, by_admin_token}
    drained = SELF.repxctl("agents", "drain", "remote-1", api=url, token=tokens["admin"])
    assert drained.code == 0 and drained.stdout == "agent remote-1: draining\n", drained
    assert httpx.post(f"{url}/v1/agents/remote-1/heartbeat", headers=agent, json={}).json()["state"] == "draining"
    assert SELF.repxctl("cancel", by_root, api=url, token=tokens["admin"]).code == 0
    assert show(d, by_root)["counts"] == {"cancelled": 1}


def test_a_users_run_on_a_root_daemon_is_found_by_the_lab_they_named(users, lab, daemons):
    """(Issue 15, one command family.) A root daemon runs a user's Lab from its own copy; `list jobs --lab` (the user's path)
    and `list jobs` without a Lab still find that run, as the user."""
    alice = users[ALICE]
    d = daemons("all", api_extra=ALLOWED)
    run_id = submit(alice, d, lab)
    try:
        wait_for(d, run_id, lambda r: r["counts"] == {"running": 1}, "started")
        for extra in (["--lab", lab], []):
            listed = alice.repxctl("list", "jobs", "--json", *extra, api=d.socket)
            assert listed.code == 0, listed.stderr
            assert [job["status"] for job in listed.json()] == ["Running"]
            assert f"showing daemon run {run_id} of {lab}" in listed.stderr
    finally:
        SELF.repxctl("cancel", run_id, api=d.socket)
