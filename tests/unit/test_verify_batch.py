"""Verifying many files with coreutils' sha256sum: same verdicts and messages as file by file."""

from __future__ import annotations

import hashlib
import os

import pytest

from repxd.errors import LabError
from repxd.lab import loader, verification
from repxd.lab.digests import all_match
from repxd.lab.writer import LabWriter


@pytest.fixture
def batch(monkeypatch):
    """Every Lab goes through the batch path; the calls to sha256sum are counted."""
    calls = []

    def counted(paths, digests):
        calls.append(len(paths))
        return all_match(paths, digests)
    monkeypatch.setattr(verification, "BATCH_HASH_MIN", 1)
    monkeypatch.setattr(verification, "all_match", counted)
    return calls


def _lab(where, jobs: int = 30):
    writer = LabWriter()
    run = writer.run("r")
    for i in range(jobs):
        run.job(f"j{i}", f'#!/bin/sh\necho {i} > "$1/n"\n', outputs={"n": "$out/n"})
    return writer.write(where)


def test_an_intact_lab_passes_with_one_batch(tmp_path, batch):
    root = _lab(tmp_path / "lab")
    lab = loader.load_lab(root, verify=True)
    assert batch == [len(lab.manifest.files)]


def test_a_modified_file_is_named(tmp_path, batch):
    root = _lab(tmp_path / "lab")
    (script,) = root.glob("jobs/*-j7-1.0/bin/j7")
    script.write_text('#!/bin/sh\necho tampered > "$1/n"\n')
    with pytest.raises(LabError, match=r"j7-1.0/bin/j7 has SHA-256 .* the manifest says"):
        loader.load_lab(root, verify=True)
    assert batch


def test_a_link_leading_outside_is_refused_even_when_its_bytes_match(tmp_path, batch):
    root = _lab(tmp_path / "lab")
    (script,) = root.glob("jobs/*-j3-1.0/bin/j3")
    outside = tmp_path / "outside"
    outside.write_bytes(script.read_bytes())
    script.unlink()
    script.symlink_to(outside)
    with pytest.raises(LabError, match="symlink leading outside the Lab"):
        loader.load_lab(root, verify=True)


def test_names_with_newlines_and_backslashes_round_trip(tmp_path):
    odd = [tmp_path / "a\nb", tmp_path / "c\\d", tmp_path / "plain"]
    for i, path in enumerate(odd):
        path.write_text(str(i))
    right = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(odd))]
    assert all_match([str(p) for p in odd], right) is True
    assert all_match([str(p) for p in odd], right[::-1]) is False
    assert all_match([str(p) for p in odd] + [str(tmp_path / "missing")], right + [right[0]]) is False


def test_a_missing_file_is_named(tmp_path, batch):
    root = _lab(tmp_path / "lab")
    (script,) = root.glob("jobs/*-j5-1.0/bin/j5")
    os.unlink(script)
    with pytest.raises(LabError, match="j5-1.0/bin/j5 is listed in the manifest but missing"):
        loader.load_lab(root, verify=True)
