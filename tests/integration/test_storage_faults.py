"""Storage faults against the real daemon (issue 11, finding 6 and the database findings): full
disks are small tmpfs mounts made here (root only), not mocks."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import missing
from service import Daemon

from repxd.lab.writer import LabWriter

FILL_DISK = '#!/bin/sh\ndd if=/dev/zero of="$1/big" bs=64k count=100000 2>&1\n'
SMALL = '#!/bin/sh\necho ok > "$1/r"\n'


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the test's duration."""
    if os.geteuid() != 0:
        missing("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last block; returns the filler to delete to free it again."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def api(daemon: Daemon) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://repx", timeout=30)


def wait_for_job(client: httpx.Client, run: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.get(f"/v1/runs/{run}/jobs").json()
        if jobs and all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError(f"run {run} did not finish: {jobs}")


def one_job_lab(dest: Path, script: str, name: str = "one") -> Path:
    lab = LabWriter()
    lab.run(name).job(f"work-{name}", script)
    return lab.write(dest)


def test_a_job_filling_its_disk_fails_with_disk_full_and_is_not_run_again(tmp_path):
    daemon = Daemon.create()
    try:
        with small_disk(daemon.base, "4m"):
            daemon.start("all")
            lab = one_job_lab(tmp_path / "lab", FILL_DISK)
            with api(daemon) as client:
                run = client.post("/v1/runs", json={"lab": str(lab), "selection": ["one"]})
                assert run.status_code == 201, run.text
                job = wait_for_job(client, run.json()["id"])
                assert job["state"] == "failed"
                assert "disk full" in job["reason"] and str(daemon.base / "outputs") in job["reason"], job
                attempts = client.get("/v1/attempts", params={"run": run.json()["id"]}).json()
                assert len(attempts) == 1
                # A restart on the still-full disk re-runs nothing and keeps answering.
                daemon.kill("all")
                daemon.start("all")
                time.sleep(1)
                assert client.get("/v1/health").json()["status"] == "ok"
                assert len(client.get("/v1/attempts", params={"run": run.json()["id"]}).json()) == 1
            assert "Traceback" not in daemon.logs()
    finally:
        daemon.stop()


def test_a_full_store_is_read_only_then_recovers_by_itself(tmp_path):
    daemon = Daemon.create()
    state = daemon.root / "state"
    try:
        with small_disk(state, "2m"):
            daemon.start("all")
            with api(daemon) as client:
                first = client.post("/v1/runs", json={"lab": str(one_job_lab(tmp_path / "a", SMALL, "a")), "selection": ["a"]})
                assert first.status_code == 201, first.text
                assert wait_for_job(client, first.json()["id"])["state"] == "succeeded"
                filler = fill(state)
                lab_b = one_job_lab(tmp_path / "b", SMALL, "b")
                refused = client.post("/v1/runs", json={"lab": str(lab_b), "selection": ["b"]})
                assert refused.status_code == 503, refused.text
                assert "disk is full" in refused.json()["error"] and str(state / "state.db") in refused.json()["error"]
                # Reads keep working, and health says why writes are refused.
                assert [r["id"] for r in client.get("/v1/runs").json()] == [first.json()["id"]]
                health = client.get("/v1/health").json()
                assert health["status"] == "read-only" and "disk is full" in health["reason"]
                time.sleep(3)  # the scheduler and the heartbeats keep hitting the full disk meanwhile
                assert daemon.processes["all"].poll() is None, daemon.logs()
                filler.unlink()
                deadline = time.monotonic() + 20
                while (second := client.post("/v1/runs", json={"lab": str(lab_b), "selection": ["b"]})).status_code == 503:
                    assert time.monotonic() < deadline, second.text
                    time.sleep(0.5)
                assert second.status_code == 201, second.text
                assert wait_for_job(client, second.json()["id"])["state"] == "succeeded"
                assert client.get("/v1/health").json()["status"] == "ok"
                assert {r["id"] for r in client.get("/v1/runs").json()} == {first.json()["id"], second.json()["id"]}
                attempts = client.get("/v1/attempts").json()
                assert sorted(a["state"] for a in attempts) == ["succeeded", "succeeded"]  # nothing ran twice
            daemon.stop()
            with sqlite3.connect(state / "state.db") as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert "Traceback" not in daemon.logs()
    finally:
        daemon.stop()




def test_a_job_filling_the_disk_it_shares_with_the_store_waits_for_space_and_runs_once(tmp_path):
    """The finding as reported: state and outputs on one filesystem, which a job fills. The daemon
    stays up (read-only), a restart re-runs nothing, and once space is freed the failure lands."""
    daemon = Daemon.create()
    shared = daemon.root / "shared"
    config = daemon.config.read_text().replace(str(daemon.root / "state"), str(shared / "state"))
    daemon.config.write_text(config.replace(str(daemon.base), str(shared / "base")))
    try:
        with small_disk(shared, "4m"):
            daemon.start("all")
            lab = one_job_lab(tmp_path / "lab", FILL_DISK)
            with api(daemon) as client:
                run = client.post("/v1/runs", json={"lab": str(lab), "selection": ["one"]}).json()["id"]
                deadline = time.monotonic() + 30
                while client.get("/v1/health").json()["status"] != "read-only":
                    assert time.monotonic() < deadline, daemon.logs()
                    time.sleep(0.2)
                daemon.kill("all")
                daemon.start("all")  # on the full disk: it starts, re-attaches, and waits
                time.sleep(2)
                assert daemon.processes["all"].poll() is None, daemon.logs()
                assert client.get("/v1/runs").json()[0]["id"] == run
                (big,) = (shared / "base" / "outputs").glob("*/out/big")
                big.unlink()
                job = wait_for_job(client, run)
                assert job["state"] == "failed" and "disk full" in job["reason"], job
                assert len(client.get("/v1/attempts", params={"run": run}).json()) == 1
                assert client.get("/v1/health").json()["status"] == "ok"
            daemon.stop()
            with contextlib.closing(sqlite3.connect(shared / "state" / "state.db")) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert "Traceback" not in daemon.logs()
    finally:
        daemon.stop()

def start_refused(daemon: Daemon, role: str = "all") -> subprocess.CompletedProcess:
    proc = subprocess.run(["repxd", role, "--config", str(daemon.config)], capture_output=True, text=True,
                          env=daemon.env, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def a_daemon_with_one_run(tmp_path: Path) -> tuple[Daemon, Path]:
    """A daemon that recorded one finished run, stopped, its database checkpointed into one file."""
    daemon = Daemon.create()
    daemon.start("all")
    with api(daemon) as client:
        run = client.post("/v1/runs", json={"lab": str(one_job_lab(tmp_path / "lab", SMALL)), "selection": ["one"]})
        assert run.status_code == 201, run.text
        wait_for_job(client, run.json()["id"])
    daemon.stop()
    database = daemon.root / "state" / "state.db"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return daemon, database


def garbage_header(database: Path) -> None:
    with open(database, "r+b") as fh:
        fh.write(b"this is no database header")


def overwritten_pages(database: Path) -> None:
    page = 4096
    with open(database, "r+b") as fh:
        for number in (2, 3):  # pages of the schema's tables, past the header page
            fh.seek((number - 1) * page)
            fh.write(bytes(range(256)) * (page // 256))


def truncated_to_nothing(database: Path) -> None:
    database.write_bytes(b"")


@pytest.mark.parametrize(("damage", "says"), [(garbage_header, "is not a SQLite database"),
                                              (overwritten_pages, "is damaged (PRAGMA quick_check"),
                                              (truncated_to_nothing, "is empty (0 bytes)")])
def test_a_damaged_database_is_refused_with_one_line(tmp_path, damage, says):
    daemon, database = a_daemon_with_one_run(tmp_path)
    damage(database)
    before = database.read_bytes()
    for role in ("all", "api", "scheduler"):
        proc = start_refused(daemon, role)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"repxd: error: {database} {says}"), line
        assert "restore it from a backup, or move it aside" in line
    assert database.read_bytes() == before  # refused, not repaired over or started afresh
    with api(daemon) as client, pytest.raises(httpx.TransportError):
        client.get("/v1/health")  # nothing serves the damaged store


def test_a_moved_aside_database_starts_an_empty_store(tmp_path):
    daemon, database = a_daemon_with_one_run(tmp_path)
    garbage_header(database)
    database.rename(database.with_name("state.db.broken"))
    try:
        daemon.start("all")
        with api(daemon) as client:
            assert client.get("/v1/runs").json() == []
    finally:
        daemon.stop()


def test_a_second_daemon_on_the_same_state_dir_refuses_and_leaves_the_first_alone(tmp_path):
    daemon = Daemon.create()
    try:
        first = daemon.start("all")
        socket_inode = daemon.socket.stat().st_ino
        for role in ("all", "api", "scheduler"):
            proc = start_refused(daemon, role)
            assert proc.returncode == 2, proc.stderr
            (line,) = proc.stderr.strip().splitlines()
            assert f"another repxd (pid {first.pid})" in line and str(daemon.root / "state") in line, line
        assert daemon.socket.stat().st_ino == socket_inode  # its socket was not taken over
        with api(daemon) as client:
            assert client.get("/v1/health").json()["status"] == "ok"
        daemon.kill("all")
        daemon.start("all")  # the lock dies with its holder: no stale lock to clear by hand
    finally:
        daemon.stop()
