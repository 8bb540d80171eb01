"""The API's Lab cache: an unchanged Lab is loaded once; any change to its files loads (and
verifies) it again, so a tampered file is still refused."""

from __future__ import annotations

import os

import pytest

from repxd.errors import LabError
from repxd.lab.writer import LabWriter
from repxd.service.submit import open_lab_cached

SCRIPT = "#!/bin/sh\necho one > \"$1/out.txt\"\n"


def write_lab(dest):
    lab = LabWriter()
    lab.run("r").job("node", SCRIPT, outputs={"data": "$out/out.txt"})
    return lab.write(dest)


def test_an_unchanged_lab_is_served_from_the_cache(tmp_path):
    root = write_lab(tmp_path / "lab")
    first = open_lab_cached(root, tmp_path / "base", verify=True)
    assert open_lab_cached(root, tmp_path / "base", verify=True) is first


def test_a_file_changed_in_place_is_verified_again(tmp_path):
    root = write_lab(tmp_path / "lab")
    open_lab_cached(root, tmp_path / "base", verify=True)
    script = next(p for p in root.rglob("*") if p.is_file() and b"echo one" in p.read_bytes())
    before = script.stat()
    script.chmod(0o755)
    # Same size and mtime as before: only the file's identity (ctime) shows the change.
    script.write_bytes(script.read_bytes().replace(b"echo one", b"echo two"))
    os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(LabError):
        open_lab_cached(root, tmp_path / "base", verify=True)


def test_a_verified_lab_serves_unverified_loads_but_not_the_reverse(tmp_path):
    """`repxd all`'s agent loads without verifying; it gets the API's verified copy (one Lab in
    memory, not two). A Lab loaded without verifying is verified before a verified use."""
    root = write_lab(tmp_path / "lab")
    verified = open_lab_cached(root, tmp_path / "base", verify=True)
    assert open_lab_cached(root, tmp_path / "base", verify=False) is verified
    other = write_lab(tmp_path / "other")
    unverified = open_lab_cached(other, tmp_path / "base", verify=False)
    fresh = open_lab_cached(other, tmp_path / "base", verify=True)
    assert fresh is not unverified
    assert open_lab_cached(other, tmp_path / "base", verify=False) is fresh


def test_large_labs_are_not_kept_beyond_the_job_budget(tmp_path, monkeypatch):
    monkeypatch.setattr("repxd.service.submit.LAB_CACHE_JOBS", 1)
    a, b = write_lab(tmp_path / "a"), write_lab(tmp_path / "b")
    first = open_lab_cached(a, tmp_path / "base", verify=False)
    assert open_lab_cached(a, tmp_path / "base", verify=False) is first
    open_lab_cached(b, tmp_path / "base", verify=False)  # one job each, a budget of one: a is dropped
    assert open_lab_cached(a, tmp_path / "base", verify=False) is not first
