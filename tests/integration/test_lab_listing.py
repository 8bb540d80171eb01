"""The listing that proves, on every socket submission, that the submitter can still read the
unchanged Lab (lab_access, lister_helper): with real users and groups, as root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import missing, require_program

from repxd.errors import LabError
from repxd.lab.writer import LabWriter
from repxd.service.lab_access import lab_as_submitter

USER, READERS = "repxl-lister", "repxl-readers"


def _remove() -> None:
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["groupdel", USER], capture_output=True)
    subprocess.run(["groupdel", READERS], capture_output=True)


@pytest.fixture(scope="module")
def submitter():
    """A user in the group READERS: (uid, gid of READERS)."""
    if os.geteuid() != 0:
        missing("the listing tests need root (they create Unix users)")
    for program in ("useradd", "userdel", "groupadd", "groupdel", "gpasswd"):
        require_program(program)
    _remove()
    try:
        for argv in (["groupadd", "--system", READERS],
                     ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                      "--groups", READERS, USER]):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                missing(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        yield pwd.getpwnam(USER).pw_uid, int(subprocess.run(["getent", "group", READERS], capture_output=True, text=True,
                                                            check=True).stdout.split(":")[2])
    finally:
        _remove()


@pytest.fixture
def shared():
    where = Path(tempfile.mkdtemp(prefix="repx-listing-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def group_lab(where: Path, gid: int) -> Path:
    """A Lab whose files only root and the group `gid` may read; its directories anyone may list,
    so anyone can see (stat) every file."""
    writer = LabWriter()
    writer.run("one").job("one", '#!/bin/sh\n: > "$1/x"\n', outputs={"x": "$out/x"})
    lab = writer.write(where / "lab")
    subprocess.run(["chgrp", "-R", str(gid), str(lab)], check=True)
    subprocess.run(["chmod", "-R", "u=rwX,g=rX,o=", str(lab)], check=True)
    subprocess.run(["find", str(lab), "-type", "d", "-exec", "chmod", "o+rx", "{}", "+"], check=True)
    return lab


def test_leaving_the_group_that_reads_the_lab_refuses_the_next_submission(submitter, shared):
    """The Lab's files are unchanged (same inodes, sizes, times, and still visible to everyone)
    and the daemon holds a copy read as the submitter; once they leave the group that let them
    read the files, their next submission is refused all the same: the listing runs with their
    groups as of now and checks that each file can be read, not only seen."""
    uid, readers = submitter
    lab = group_lab(shared, readers)
    cache = shared / "cache"
    copy = lab_as_submitter(str(lab), uid, USER, cache)
    assert copy != lab and any(copy.iterdir())  # the daemon's own copy
    assert lab_as_submitter(str(lab), uid, USER, cache) == copy  # unchanged: the same copy
    subprocess.run(["gpasswd", "--delete", USER, READERS], check=True, capture_output=True)
    try:
        with pytest.raises(LabError, match=f"not found or not readable by {USER}"):
            lab_as_submitter(str(lab), uid, USER, cache)
    finally:
        subprocess.run(["gpasswd", "--add", USER, READERS], check=True, capture_output=True)
    assert lab_as_submitter(str(lab), uid, USER, cache) == copy  # back in the group: readable again


def test_a_file_the_submitter_may_see_but_not_read_refuses_the_lab(submitter, shared):
    uid, readers = submitter
    lab = group_lab(shared, readers)
    (lab / "secret").write_text("root's\n")
    (lab / "secret").chmod(0o600)  # listed in a directory they may read, but unreadable to them
    with pytest.raises(LabError, match=f"not found or not readable by {USER}"):
        lab_as_submitter(str(lab), uid, USER, shared / "cache")


def workers_of(uid: int) -> list[int]:
    """The listing workers running as `uid`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"lister_helper.py" in (proc / "cmdline").read_bytes() and proc.stat().st_uid == uid:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_listing_worker_is_replaced(submitter, shared):
    """The submitter may kill the worker that lists as them (it is theirs); their next submission
    gets a new one, and no worker of theirs can become root again."""
    uid, readers = submitter
    lab = group_lab(shared, readers)
    copy = lab_as_submitter(str(lab), uid, USER, shared / "cache")
    workers = workers_of(uid)  # one per identity the earlier tests had (their groups changed)
    assert workers
    for worker in workers:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{worker}/status").read_text().splitlines())
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
        assert len(set(status["Gid"].split())) == 1, status["Gid"]
        assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == 0
        os.kill(worker, 9)
    assert lab_as_submitter(str(lab), uid, USER, shared / "cache") == copy
    assert workers_of(uid) and not set(workers_of(uid)) & set(workers)


SUBMIT_AS = """
import sys
from pathlib import Path
from repxd.errors import LabError
from repxd.lab.loader import load_lab
from repxd.service.lab_access import lab_as_submitter
try:
    copy = lab_as_submitter(sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    load_lab(copy)
except LabError as exc:
    print("refused:", exc)
else:
    print("loaded")
"""


@pytest.mark.parametrize("where", ["beside the Lab's files", "in place of a job's script"])
def test_a_fifo_in_a_submitted_lab_blocks_nothing(submitter, shared, where):
    """A submitter's FIFO in their Lab, listed or named by the manifest: the submission is
    refused at once (no open waits for a writer that never comes), in one line naming the FIFO
    by the submitter's path, not by the daemon's copy."""
    uid, readers = submitter
    lab = group_lab(shared, readers)
    if where == "beside the Lab's files":
        fifo = lab / "a-fifo"
    else:
        (fifo,) = lab.glob("jobs/*/bin/one")
        fifo.unlink()
    os.mkfifo(fifo, 0o640)
    os.chown(fifo, 0, readers)
    done = subprocess.run([sys.executable, "-c", SUBMIT_AS, str(lab), str(uid), USER, str(shared / "cache")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and f"{fifo} is a FIFO;" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr and not (shared / "cache" / "labs").exists()
