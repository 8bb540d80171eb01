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
