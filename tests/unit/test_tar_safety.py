"""Tar Labs and image layers from hostile hands: the unpacked tree is keyed by the tar's content,
bounded in size and members, never written through links, and loads on Debian's own Python."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lab_factory import add_tar_member, build_tar

from repxd.errors import LabError
from repxd.exec.runtimes import _apply_layer
from repxd.lab import tar_lab
from repxd.lab.loader import load_lab

WORKTREE = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _same_name_size_mtime(original: Path, forged: Path) -> None:
    """Make `forged` the same size and mtime as `original`, as an attacker would."""
    with open(forged, "ab") as fh:
        fh.truncate(original.stat().st_size)
    st = original.stat()
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_tar_with_the_same_name_size_and_mtime_gets_its_own_tree(tmp_path: Path) -> None:
    genuine = build_tar(tmp_path / "genuine" / "lab.tar", image=False)
    lab = load_lab(genuine, unpack_dir=tmp_path / "unpack")
    script = next(lab.root.glob("jobs/*/bin/*"))
    before = script.read_bytes()
    # Alice's tar: one more member, padded to the genuine tar's size, the same name and mtime.
    forged = build_tar(tmp_path / "forged" / "lab.tar", image=False)
    with tarfile.open(forged, "a") as tf:
        info = tarfile.TarInfo(f"result/{script.relative_to(lab.root)}")
        data = b"#!/bin/sh\necho POISONED\n"
        info.size, info.mode = len(data), 0o755
        tf.addfile(info, io.BytesIO(data))
    if forged.stat().st_size < genuine.stat().st_size:
        _same_name_size_mtime(genuine, forged)
    else:
        _same_name_size_mtime(forged, genuine)
        lab = load_lab(genuine, unpack_dir=tmp_path / "unpack")
    other = load_lab(forged, unpack_dir=tmp_path / "unpack", verify=False)
    assert other.root != lab.root
    assert load_lab(genuine, unpack_dir=tmp_path / "unpack").root == lab.root
    assert script.read_bytes() == before


def test_one_tar_unpacked_by_many_threads_at_once_is_whole_for_each(tmp_path: Path) -> None:
    """A root daemon unpacks each submitter's copy of a Lab in its worker threads: 200 users
    submitting one Lab once shared one temporary directory and loaded a tree another thread
    was still writing ("listed in the manifest but missing")."""
    tar = build_tar(tmp_path / "lab.tar", image=False)
    for round_ in range(5):
        unpack = tmp_path / f"unpack{round_}"
        with ThreadPoolExecutor(8) as pool:
            labs = list(pool.map(lambda _, into=unpack: load_lab(tar, unpack_dir=into), range(16)))
        assert len({lab.root for lab in labs}) == 1
        assert all(len(lab.jobs) == len(labs[0].jobs) > 0 for lab in labs)
        assert not list(unpack.glob(".*repx-tmp"))


def test_a_refused_tar_leaves_nothing_behind(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar", image=False)
    add_tar_member(tar, "result/../x")
    with pytest.raises(LabError, match="escapes"):
        load_lab(tar, unpack_dir=tmp_path / "unpack")
    assert not (tmp_path / "unpack").exists() or not any((tmp_path / "unpack").iterdir())


def test_a_gzip_bomb_is_refused_before_unpacking(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tar_lab, "MAX_TAR_BYTES", 8 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("result/lab/zeros")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(LabError, match="unpacks to more than"):
        load_lab(bomb, unpack_dir=tmp_path / "unpack")
    assert not (tmp_path / "unpack").exists()


def test_a_tar_of_too_many_members_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tar_lab, "MAX_TAR_MEMBERS", 50)
    tar = build_tar(tmp_path / "lab.tar", image=False)
    with pytest.raises(LabError, match="more than 50 members"):
        load_lab(tar, unpack_dir=tmp_path / "unpack")


def test_an_image_layer_cannot_write_through_a_link_out_of_the_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tf:
        link = tarfile.TarInfo("etc")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(link)
        pwned = tarfile.TarInfo("etc/pwned")
        pwned.size = 1
        tf.addfile(pwned, io.BytesIO(b"x"))
    with pytest.raises(LabError, match="beneath a symbolic link|through a link"):
        _apply_layer(layer, tmp_path / "rootfs")
    assert not (outside / "pwned").exists()


def test_tar_labs_load_under_debians_python(tmp_path: Path) -> None:
    """/usr/bin/python3 on Debian 12 is 3.11.2, whose tarfile has no extraction filters. Debian's
    own python3-pydantic is 1.x, so the test lends it this interpreter's packages (same ABI)."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    tar = build_tar(tmp_path / "lab.tar", image=False)
    path = os.pathsep.join([str(WORKTREE), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    code = ("import sys; from repxd.lab.loader import load_lab; "
            "from pathlib import Path; lab = load_lab(sys.argv[1], unpack_dir=Path(sys.argv[2])); print(sys.version.split()[0], len(lab.jobs))")
    done = subprocess.run([DEBIAN_PYTHON, "-c", code, tar, tmp_path / "unpack"], capture_output=True, text=True,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    version, jobs = done.stdout.split()
    assert int(jobs) == len(load_lab(tar, unpack_dir=tmp_path / "mine").jobs)
    assert sys.version_info[:2] == tuple(int(x) for x in version.split(".")[:2])
