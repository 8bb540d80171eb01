"""Jobs never run with the daemon's powers: real Unix users, a root daemon and a daemon under a
service user, the subprocess launcher (no systemd here).

Needs root: the tests create the users repxi-alice (a researcher) and repxi-svc (a service
account), run programs as them with setpriv, and remove them afterwards. Not root: skip, or fail
with REPX_REQUIRE_SYSTEM_TESTS=1."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import missing, require_program
from service import Daemon
from test_auth import REPXCTL, SELF, User, _prefix

from repxd.lab.writer import LabWriter

ALICE, SERVICE = "repxi-alice", "repxi-svc"
REPXD = REPXCTL.with_name("repxd")

# What a job finds out about its reach; each line "name value" in $out/report.
PROBE = """#!/bin/sh
out=$1
{
echo "uid $(id -u)"
if cat /etc/shadow >/dev/null 2>&1; then echo "shadow readable"; else echo "shadow denied"; fi
if cat "$STATE_DB" >/dev/null 2>&1; then echo "db readable"; else echo "db denied"; fi
if ( : >> "$STATE_DB" ) 2>/dev/null; then echo "db writable"; else echo "db denied"; fi
echo "drain $(/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b"POST /v1/agents/agent-1/drain HTTP/1.0\\r\\nHost: repx\\r\\nContent-Length: 0\\r\\n\\r\\n")
print(s.recv(64).split()[1].decode())' "$API_SOCKET")"
} > "$out/report"
"""


def _remove(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        missing("the isolation tests need root (they create Unix users)")
    for program in ("useradd", "userdel", "groupdel", "setpriv"):
        require_program(program)
    for name in (ALICE, SERVICE):
        _remove(name)
    try:
        made = {}
        for name in (ALICE, SERVICE):
            done = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                missing(f"useradd {name} failed: {done.stderr.strip()}")
            entry = pwd.getpwnam(name)
            made[name] = User(name, entry.pw_uid, entry.pw_gid, _prefix(name))
        yield made
    finally:
        for name in (ALICE, SERVICE):
            _remove(name)


@pytest.fixture
def shared_dir():
    """A directory every user can read (pytest's tmp_path is 0700)."""
    where = Path(tempfile.mkdtemp(prefix="repx-iso-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def subprocess_daemon(started: list[Daemon], **kw) -> Daemon:
    d = Daemon.create(**kw)
    d.config.write_text(d.config.read_text().replace("[agent]\n", '[agent]\nlauncher = "subprocess"\n'))
    started.append(d)
    return d


def probe_lab(where: Path, d: Daemon, name: str = "probe", script: str = PROBE, **job) -> Path:
    writer = LabWriter()
    text = script.replace('out=$1', f'out=$1\nSTATE_DB={d.root / "state" / "state.db"}\nAPI_SOCKET={d.socket}')
    writer.run(name).job(name, text, outputs={"report": "$out/report"}, **job)
    return writer.write(where / name)


def reasons(d: Daemon) -> list[str]:
    result = SELF.repxctl("jobs", "--json", api=d.socket)
    assert result.code == 0, result.stderr
    return [job["reason"] for job in result.json()]


def run_and_wait(user: User, d: Daemon, lab: Path, selection: str = "probe") -> str:
    """Submits, waits for the run to end, and returns its state."""
    result = user.repxctl("run", selection, "--lab", lab, "--detach", api=d.socket)
    assert result.code == 0, result.stderr + d.logs()
    run_id = result.stdout.strip()
    deadline = time.monotonic() + 60
    while True:
        run = SELF.repxctl("runs", run_id, "--json", api=d.socket).json()
        if run["state"] not in ("active", "cancelling"):
            return run["state"]
        assert time.monotonic() < deadline, f"run {run_id} did not end: {run}\n{d.logs()}"
        time.sleep(0.2)


def report(d: Daemon, job: str = "probe") -> dict[str, str]:
    (path,) = (d.base / "outputs").glob(f"*-{job}-1.0/out/report")
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


def stderr_of(d: Daemon, job: str) -> str:
    (path,) = (d.base / "outputs").glob(f"*-{job}-1.0/repx/stderr.log")
    return path.read_text()


def test_a_root_daemon_runs_a_socket_submission_as_its_submitter(users, shared_dir, daemons):
    alice = users[ALICE]
    d = subprocess_daemon(daemons, jobs_as_daemon=False)
    lab = probe_lab(shared_dir, d)
    d.start("all")
    assert run_and_wait(alice, d, lab) == "succeeded", d.logs()
    assert report(d) == {"uid": str(alice.uid), "shadow": "denied", "db": "denied", "drain": "403"}
    (out,) = (d.base / "outputs").glob("*-probe-1.0/out")
    assert (out.stat().st_uid, out.stat().st_mode & 0o777) == (alice.uid, 0o750)


def test_a_root_submission_runs_as_the_unprivileged_job_user(users, shared_dir, daemons):
    d = subprocess_daemon(daemons, jobs_as_daemon=False)
    lab = probe_lab(shared_dir, d)
    d.start("all")
    assert run_and_wait(SELF, d, lab) == "succeeded", d.logs()
    assert report(d) == {"uid": str(pwd.getpwnam("nobody").pw_uid), "shadow": "denied", "db": "denied", "drain": "403"}


def test_a_service_user_daemon_refuses_to_run_jobs_as_itself(users, shared_dir, daemons):
    alice, service = users[ALICE], users[SERVICE]
    d = subprocess_daemon(daemons, jobs_as_daemon=False)
    lab = probe_lab(shared_dir, d)
    subprocess.run(["chown", "-R", f"{service.uid}:{service.gid}", str(d.root)], check=True)
    log = open(d.root / "all.log", "ab")  # noqa: SIM115 - lives as long as the process
    d.processes["all"] = subprocess.Popen([*service.prefix, REPXD, "all", "--config", d.config], stdout=log,
                                          stderr=subprocess.STDOUT, env={**d.env, "HOME": str(d.root)})
    d.wait_for_api()
    assert run_and_wait(alice, d, lab) == "failed", d.logs()
    (reason,) = reasons(d)
    assert f"the agent runs as uid {service.uid} without systemd units and cannot start jobs as uid {alice.uid}" in reason
    assert "allow_jobs_as_daemon_user" in reason
    assert "agent.allow_jobs_as_daemon_user = true" in reason
    assert not list((d.base / "outputs").glob("*-probe-1.0/out/report")), "the job ran"


def test_the_time_limit_stops_a_job(shared_dir, daemons):
    d = subprocess_daemon(daemons)
    lab = probe_lab(shared_dir, d, "slow", "#!/bin/sh\nout=$1\nsleep 120\n", resources={"time": "00:00:02"})
    d.start("all")
    started = time.monotonic()
    assert run_and_wait(SELF, d, lab, "slow") == "failed"
    assert time.monotonic() - started < 30
    assert reasons(d) == ["was stopped for exceeding its time limit"]
    assert "exceeding its time limit" in stderr_of(d, "slow")


def _running(command: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip() == command.encode():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_cancel_stops_children_that_left_the_session(shared_dir, daemons):
    d = subprocess_daemon(daemons)
    # Durations unique to this test run, so no other process is mistaken for the job's.
    first = 10_000 + os.getpid() % 50_000 * 3
    child, orphan, main = (f"sleep {first + i}" for i in range(3))
    # One child in a new session under the job, one orphaned by its parent (a double fork).
    script = f"#!/bin/sh\nout=$1\nsetsid {child} &\n(setsid {orphan} &)\n{main}\n"
    lab = probe_lab(shared_dir, d, "escape", script)
    d.start("all")
    result = SELF.repxctl("run", "escape", "--lab", lab, "--detach", api=d.socket)
    run_id = result.stdout.strip()
    deadline = time.monotonic() + 30
    while not (_running(child) and _running(orphan) and _running(main)):
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.1)
    assert SELF.repxctl("cancel", run_id, api=d.socket).code == 0
    deadline = time.monotonic() + 30
    while left := _running(child) + _running(orphan) + _running(main):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.1)


def test_a_poisoned_artifacts_tree_is_not_run(shared_dir, daemons):
    """Another Lab (or anyone) placed a script at the genuine job's name under artifacts/: the
    job runs the bytes its own manifest verified."""
    d = subprocess_daemon(daemons)
    lab = probe_lab(shared_dir, d, "honest", '#!/bin/sh\nout=$1\necho genuine > "$out/report"\n')
    (script,) = lab.glob("**/jobs/*/bin/honest")
    poisoned = d.base / "artifacts" / script.relative_to(script.parents[3])
    poisoned.parent.mkdir(parents=True)
    poisoned.write_text('#!/bin/sh\necho POISONED > "$1/report"\n')
    poisoned.chmod(0o755)
    d.start("all")
    assert run_and_wait(SELF, d, lab, "honest") == "succeeded", d.logs()
    (out,) = (d.base / "outputs").glob("*-honest-1.0/out/report")
    assert out.read_text() == "genuine\n"


def test_a_lab_the_submitter_cannot_read_is_refused_like_a_missing_one(users, shared_dir, daemons):
    alice, bob = users[ALICE], users[SERVICE]
    d = subprocess_daemon(daemons, jobs_as_daemon=False)
    home = shared_dir / "bob"
    home.mkdir(mode=0o700)
    lab = probe_lab(home, d)
    subprocess.run(["chown", "-R", f"{bob.uid}:{bob.gid}", str(home)], check=True)
    d.start("all")
    hidden = alice.repxctl("run", "probe", "--lab", lab, "--detach", api=d.socket)
    absent = alice.repxctl("run", "probe", "--lab", shared_dir / "nothing" / "lab", "--detach", api=d.socket)
    assert hidden.code == absent.code == 2, hidden.stderr + absent.stderr
    assert hidden.stderr.replace(str(lab), "PATH") == absent.stderr.replace(str(shared_dir / "nothing" / "lab"), "PATH")
    assert "not found or not readable by repxi-alice" in hidden.stderr
    assert SELF.repxctl("runs", "--json", api=d.socket).json() == []
    # Bob himself may.
    assert run_and_wait(bob, d, lab) == "succeeded", d.logs()


def test_a_user_submitting_too_much_at_once_gets_429(shared_dir, daemons):
    """Loading a Lab takes worker threads; a third concurrent submission of one user waits its turn."""
    import concurrent.futures

    import httpx

    d = subprocess_daemon(daemons)
    # A Lab whose manifest lists a 6 GiB sparse file: seconds to verify, then refused (400).
    big = probe_lab(shared_dir, d)
    (manifest_path,) = big.glob("**/lab/*lab-metadata.json")
    with open(big / "huge", "wb") as fh:
        fh.truncate(6 << 30)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"].append({"path": "huge", "sha256": "0" * 64})
    manifest_path.write_text(json.dumps(manifest))
    d.start("all")

    def submit_once() -> int:
        transport = httpx.HTTPTransport(uds=str(d.socket))
        with httpx.Client(transport=transport, base_url="http://repx", timeout=120) as client:
            return client.post("/v1/runs", json={"lab": str(big), "selection": ["probe"]}).status_code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = sorted(pool.map(lambda _: submit_once(), range(3)))
    assert statuses == [400, 400, 429], statuses
    assert d.socket.exists() and submit_once() == 400  # served again once the others are done


def _owned_lab(where: Path, owner: User, d: Daemon, words: str) -> Path:
    """A Lab whose job `probe` writes `words`, in a 0700 directory of `owner`."""
    where.mkdir(mode=0o700)
    lab = probe_lab(where, d, script=f'#!/bin/sh\nout=$1\necho "{words}" > "$out/report"\n')
    subprocess.run(["chown", "-R", f"{owner.uid}:{owner.gid}", str(where)], check=True)
    return lab


def test_a_lab_swapped_for_a_link_mid_read_never_yields_another_users_lab(users, shared_dir, daemons):
    """The check-then-load race: alice flips her Lab path between her own Lab and a link to bob's
    private one while the daemon reads it. Everything the daemon loads was read as alice, so each
    read gives her Lab or a refusal, never bob's."""
    from repxd.errors import LabError
    from repxd.lab.loader import load_lab
    from repxd.service.lab_access import lab_as_submitter

    alice, bob = users[ALICE], users[SERVICE]
    d = subprocess_daemon(daemons)
    mine = _owned_lab(shared_dir / "alice", alice, d, "alice's own")
    theirs = _owned_lab(shared_dir / "bob", bob, d, "bob's secret")
    flipping = shared_dir / "alice-link"
    # A process of its own flips the link, so the flips interleave with every step of a read.
    flipper = subprocess.Popen(["/bin/sh", "-c", 'while :; do for t in "$1" "$2"; do ln -sfn "$t" "$3.tmp"; mv -T "$3.tmp" "$3"; done; done',
                                "sh", str(mine), str(theirs), str(flipping)])
    loaded, refused = [], 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                loaded.append(load_lab(lab_as_submitter(str(flipping), alice.uid, ALICE, d.base / "cache"), verify=True))
            except LabError as exc:
                assert "not found or not readable by repxi-alice" in str(exc)
                refused += 1
    finally:
        flipper.kill()
        flipper.wait()
    own = load_lab(mine).lab_id  # the two Labs' job ids are equal; their contents are not
    assert loaded and refused, (len(loaded), refused)  # both sides of the flip were met
    assert [lab.lab_id for lab in loaded] == [own] * len(loaded)


def test_a_lab_swapped_after_submission_runs_as_submitted(users, shared_dir, daemons):
    """The daemon keeps what it read as the submitter: swapping the Lab's directory for a link to
    another user's Lab before the agent starts the job changes nothing."""
    alice, bob = users[ALICE], users[SERVICE]
    d = subprocess_daemon(daemons, jobs_as_daemon=False)
    home = shared_dir / "alice"
    lab = _owned_lab(home, alice, d, "alice's own")
    theirs = _owned_lab(shared_dir / "bob", bob, d, "bob's secret")
    d.start("api")
    submitted = alice.repxctl("run", "probe", "--lab", lab, "--detach", api=d.socket)
    assert submitted.code == 0, submitted.stderr + d.logs()
    lab.rename(home / "was-here")
    lab.symlink_to(theirs)
    d.start("scheduler")
    d.start("agent")
    deadline = time.monotonic() + 60
    while (run := SELF.repxctl("runs", submitted.stdout.strip(), "--json", api=d.socket).json())["state"] == "active":
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.2)
    assert run["state"] == "succeeded", d.logs()
    assert run["options"]["submitted_lab"] == str(lab)
    assert not run["lab_path"].startswith(str(shared_dir))
    reports = [p.read_text() for p in (d.base / "outputs").glob("*/out/report")]
    assert reports == ["alice's own\n"]
