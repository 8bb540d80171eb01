"""Property: whatever happens to a Lab on disk, `load_lab` returns a Lab or raises LabError.

A valid Lab is written once per module; each example copies it, applies a few random mutations
(corrupt or truncate JSON, delete files, flip script bytes, retype or delete JSON values, rename
job-id references, chmod -x, add symlinks), optionally re-hashes the manifest so the structural
checks are reached with verification on, and loads it. Any exception other than LabError is a
loader bug. The same holds for tar Labs with corrupted bytes."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lab_factory import MANIFEST, build_lab, build_tar

from repxd.errors import LabError
from repxd.lab.loader import load_lab
from repxd.lab.model import Lab

# REPX_FUZZ_EXAMPLES=5000 for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("REPX_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lab(tmp_path_factory.mktemp("fuzz-base") / "lab")


@pytest.fixture(scope="module")
def base_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tar(tmp_path_factory.mktemp("fuzz-tar") / "lab.tar")


@pytest.fixture(scope="module")
def job_ids(base_lab: Path) -> list[str]:
    return sorted(p.name for p in (base_lab / "jobs").iterdir())


# ---- random JSON -------------------------------------------------------------------------------

# Strings that have broken path handling before (NUL: ValueError; over NAME_MAX: OSError).
PATH_TRAPS = st.sampled_from(["", ".", "..", "../x", "/etc/passwd", "a\x00b", "a\nb", "x" * 300, "jobs", "lab"])
INTERESTING_STRINGS = st.sampled_from([
    "", ".", "..", "../x", "/etc/passwd", "a\x00b", "a\nb", "self", "hard", "soft", "simple",
    "scatter-gather", "gather", "worker", "intra-pipeline", "inter-run", "global", "main",
    "revision/metadata-top.json", "revision/metadata-simulation.json", "lab/lab-metadata.json",
    "jobs", "images", "readme/README.md", "x" * 300, "0" * 64, "🦀",
])
TEXT = st.text(max_size=20) | INTERESTING_STRINGS
BY_KIND: dict[str, st.SearchStrategy] = {
    "null": st.none(),
    "bool": st.booleans(),
    "number": st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False),
    "string": TEXT,
}
JSON_VALUES = st.recursive(
    st.one_of(*BY_KIND.values()),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6,
)
BY_KIND["array"] = st.lists(JSON_VALUES, max_size=3)
BY_KIND["object"] = st.dictionaries(TEXT, JSON_VALUES, max_size=3)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {type(None): "null", str: "string", list: "array", dict: "object"}[type(value)]


def other_kind(data: st.DataObject, value: Any) -> Any:
    """A random JSON value whose type differs from `value`'s."""
    kind = data.draw(st.sampled_from(sorted(k for k in BY_KIND if k != _kind(value))))
    return data.draw(BY_KIND[kind])


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys / indexes) to every node of a JSON value, the root included."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _nodes(child, (*path, index))
    return found


def _get(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


# ---- mutations -----------------------------------------------------------------------------------


def _files(lab: Path) -> list[Path]:
    return sorted(p for p in lab.rglob("*") if p.is_file() and not p.is_symlink())


def _json_files(lab: Path) -> list[Path]:
    return [p for p in _files(lab) if p.suffix == ".json"]


def _pick_json(data: st.DataObject, lab: Path) -> Path | None:
    """A JSON file, mostly one the loader parses (manifest, root and run metadata); None if none is left."""
    every = _json_files(lab)
    if not every:
        return None
    parsed = [p for p in every if p.parent.name in ("lab", "revision")]
    return data.draw(st.sampled_from(parsed) if parsed and data.draw(st.integers(0, 4)) else st.sampled_from(every))


def _scripts(lab: Path) -> list[Path]:
    return [p for p in _files(lab) if p.parent.name == "bin"]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, OSError):
        return None


def truncate_json(data: st.DataObject, lab: Path) -> None:
    path = _pick_json(data, lab)
    if path is None:
        return
    content = path.read_bytes()
    path.write_bytes(content[: data.draw(st.integers(0, max(0, len(content) - 1)))])


def corrupt_json(data: st.DataObject, lab: Path) -> None:
    path = _pick_json(data, lab)
    if path is None:
        return
    content = bytearray(path.read_bytes())
    if not content:
        return
    at = data.draw(st.integers(0, len(content) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\x00", b"\xff", b"{", b'"', b"]", b"\\"]))
    content[at : at + len(junk)] = junk
    path.write_bytes(bytes(content))


def delete_file(data: st.DataObject, lab: Path) -> None:
    candidates = _files(lab) + sorted(p for p in lab.rglob("*") if p.is_dir() and not p.is_symlink())
    if not candidates:
        return
    path = data.draw(st.sampled_from(candidates))
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def flip_script_byte(data: st.DataObject, lab: Path) -> None:
    scripts = _scripts(lab)
    if not scripts:
        return
    path = data.draw(st.sampled_from(scripts))
    try:
        content = bytearray(path.read_bytes())
    except PermissionError:  # chmod 000 by an earlier mutation, and not running as root
        return
    if not content:
        return
    at = data.draw(st.integers(0, len(content) - 1))
    content[at] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(content))


def retype_json_value(data: st.DataObject, lab: Path) -> None:
    path = _pick_json(data, lab)
    doc = _load_json(path) if path else None
    if doc is None:
        return
    where = data.draw(st.sampled_from(_nodes(doc)))
    old = _get(doc, where)
    new = other_kind(data, old)
    if where:
        _get(doc, where[:-1])[where[-1]] = new
    else:
        doc = new
    path.write_text(json.dumps(doc))


def replace_string(data: st.DataObject, lab: Path) -> None:
    """Replace a string value or an object key by another string; mostly paths, job ids and run names."""
    path = _pick_json(data, lab)
    doc = _load_json(path) if path else None
    if doc is None:
        return
    values = [p for p in _nodes(doc) if p and isinstance(_get(doc, p), str)]
    keys = [(*p, KEY) for p in _nodes(doc) if p and isinstance(p[-1], str)]
    candidates = values + keys
    if not candidates:
        return
    pathish = [p for p in candidates if _looks_like_reference(p[-2] if p[-1] is KEY else _get(doc, p))]
    where = data.draw(st.sampled_from(pathish if pathish and data.draw(st.integers(0, 3)) else candidates))
    choice = data.draw(st.integers(0, 3))
    new = data.draw(PATH_TRAPS if choice >= 2 else INTERESTING_STRINGS if choice == 1 else st.text(max_size=12))
    if where[-1] is KEY:
        parent = _get(doc, where[:-2])
        parent[new] = parent.pop(where[-2])
    else:
        _get(doc, where[:-1])[where[-1]] = new
    path.write_text(json.dumps(doc))


KEY = object()  # marks "the key itself" in a path of replace_string


def _looks_like_reference(text: str) -> bool:
    return "/" in text or text.endswith("-1.0") or text in ("simulation", "analysis", "sweep", "all", "sweepers")


def delete_json_key(data: st.DataObject, lab: Path) -> None:
    path = _pick_json(data, lab)
    doc = _load_json(path) if path else None
    keyed = [p for p in _nodes(doc) if p and isinstance(_get(doc, p[:-1]), dict)]
    if not keyed:
        return
    where = data.draw(st.sampled_from(keyed))
    del _get(doc, where[:-1])[where[-1]]
    path.write_text(json.dumps(doc))


def rename_job_reference(data: st.DataObject, lab: Path, job_ids: list[str]) -> None:
    old = data.draw(st.sampled_from(job_ids))
    new = data.draw(st.sampled_from(job_ids) | st.sampled_from([
        old[:-1], old + "x", "1" * 32 + "-ghost-1.0", "self", "", "..", "../" + old, "/" + old, old.upper(),
    ]) | st.text(max_size=12))
    files = [p for p in _json_files(lab) if old in p.read_text(errors="replace")]
    if files:
        path = data.draw(st.sampled_from(files))
        escaped = json.dumps(new)[1:-1]
        count = data.draw(st.sampled_from([1, -1]))
        path.write_text(path.read_text(errors="replace").replace(old, escaped, count))
    if data.draw(st.booleans()) and (lab / "jobs" / old).is_dir() and new and "/" not in new and "\x00" not in new:
        target = lab / "jobs" / new
        if not target.exists() and new not in (".", ".."):
            (lab / "jobs" / old).rename(target)


def chmod_script(data: st.DataObject, lab: Path) -> None:
    scripts = _scripts(lab)
    if not scripts:
        return
    path = data.draw(st.sampled_from(scripts))
    path.chmod(data.draw(st.sampled_from([0o644, 0o600, 0o000, 0o111, 0o4755])))


def add_symlink(data: st.DataObject, lab: Path, outside: Path) -> None:
    entries = sorted(lab.rglob("*"))
    dirs = [lab] + [p for p in entries if p.is_dir() and not p.is_symlink()]
    if data.draw(st.booleans()):
        victim = data.draw(st.sampled_from([p for p in entries if not p.is_dir()] or [lab / "new"]))
        if victim.exists() or victim.is_symlink():
            victim.unlink()
    else:
        victim = data.draw(st.sampled_from(dirs)) / data.draw(st.sampled_from(["new", "lab-metadata.json", "x.json"]))
        if victim.exists() or victim.is_symlink():
            return
    target = data.draw(st.sampled_from([
        "/etc/passwd", "/nonexistent/x", str(outside), str(outside.parent), "/", "..", "../..", "../../..",
        "../../../etc/passwd", victim.name, ".", "missing",
    ]) | st.sampled_from([os.path.relpath(p, victim.parent) for p in entries[:50]] or ["."]))
    victim.symlink_to(target)


def rehash(lab: Path) -> None:
    """Best-effort: recompute the manifest's file list so verification passes and deeper checks run."""
    manifest = lab / MANIFEST
    doc = _load_json(manifest) if manifest.is_file() and not manifest.is_symlink() else None
    if not isinstance(doc, dict):
        return
    files = []
    for path in _files(lab):
        rel = path.relative_to(lab).as_posix()
        if not rel.startswith("lab/"):
            with contextlib.suppress(OSError):
                files.append({"path": rel, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    doc["files"] = files
    manifest.write_text(json.dumps(doc))


MUTATIONS = [  # replace_string twice: it reaches the deepest checks
    "truncate_json", "corrupt_json", "delete_file", "flip_script_byte", "retype_json_value",
    "replace_string", "replace_string", "delete_json_key", "rename_job_reference", "chmod_script", "add_symlink",
]


def mutate(data: st.DataObject, lab: Path, job_ids: list[str], outside: Path) -> list[str]:
    applied = data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=2), label="mutations")
    for name in applied:
        if name == "rename_job_reference":
            rename_job_reference(data, lab, job_ids)
        elif name == "add_symlink":
            add_symlink(data, lab, outside)
        else:
            globals()[name](data, lab)
    if data.draw(st.integers(0, 3), label="rehash"):  # mostly: verification passes, deeper checks run
        rehash(lab)
    return applied


def _expect_lab_or_lab_error(path: Path, **kwargs) -> Lab | LabError:
    try:
        result = load_lab(path, **kwargs)
    except LabError as exc:
        assert str(exc).strip()
        event(f"LabError: {_gist(str(exc))}")  # see --hypothesis-show-statistics
        return exc
    assert isinstance(result, Lab)
    event("loaded")
    return result


def _gist(message: str) -> str:
    """The message without Lab-specific paths and ids, to group errors in the statistics."""
    words = [w for w in message.split() if "/" not in w and not any(c.isdigit() for c in w)]
    return " ".join(words[:6])


# ---- properties ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), verify=st.booleans())
def test_mutated_lab_loads_or_raises_lab_error(base_lab: Path, job_ids: list[str], data: st.DataObject, verify: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="repx-fuzz-") as work:
        lab = Path(work) / "lab"
        shutil.copytree(base_lab, lab, symlinks=True)
        outside = Path(work) / "outside.txt"
        outside.write_text("outside the Lab\n")
        for name in mutate(data, lab, job_ids, outside):
            event(f"mutation: {name}")
        _expect_lab_or_lab_error(lab, verify=verify)


def corrupt_bytes(data: st.DataObject, content: bytes) -> bytes:
    """Truncate, flip bytes in or overwrite part of `content`."""
    content = bytearray(content)
    how = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]), label="corruption")
    if how == "truncate":
        return bytes(content[: data.draw(st.integers(0, len(content) - 1))])
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(content) - 1))
            content[at] ^= data.draw(st.integers(1, 255))
        return bytes(content)
    at = data.draw(st.integers(0, len(content) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    content[at : at + len(junk)] = junk
    return bytes(content)


def append_member(data: st.DataObject, tar: Path) -> None:
    info = tarfile.TarInfo(data.draw(st.sampled_from([
        "result/new", "result/lab/other-lab-metadata.json", "result/jobs", "result/revision/metadata-top.json",
        "x/lab/lab-metadata.json", "./result/readme/x", "result/./x", "result//x", "result/readme",
    ]), label="name"))
    kind = data.draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]), label="kind")
    payload = data.draw(st.binary(max_size=32))
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind in ("symlink", "hardlink"):
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = data.draw(st.sampled_from(["result/readme/README.md", "README.md", "..", "x", "", "result/jobs"]))
    else:
        info.size = len(payload)
    with tarfile.open(tar, "a") as tf:
        tf.addfile(info, io.BytesIO(payload) if kind == "file" else None)


COMPRESS = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}


@FUZZ
@given(data=st.data(), verify=st.booleans())
def test_corrupted_tar_lab_loads_or_raises_lab_error(base_tar: Path, data: st.DataObject, verify: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="repx-fuzz-tar-") as work:
        tar = Path(work) / "lab.tar"
        shutil.copy(base_tar, tar)
        if data.draw(st.booleans(), label="append member"):
            append_member(data, tar)
        compression = data.draw(st.sampled_from([None, *COMPRESS]), label="compression")
        content = tar.read_bytes()
        if compression:
            content = COMPRESS[compression](content)
        if data.draw(st.integers(0, 3), label="corrupt"):
            content = corrupt_bytes(data, content)
        tar.write_bytes(content)
        _expect_lab_or_lab_error(tar, verify=verify, unpack_dir=Path(work) / "unpack")
