"""Loading Labs (repxd.lab.loader): valid directory and tar Labs, every malformed-Lab error, and the
DAG helpers of repxd.lab.graph (selectors, closure, topological order, statuses)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from lab_factory import (
    GROUPS,
    JOB_COUNT,
    MANIFEST,
    RUNS,
    add_tar_member,
    build_lab,
    build_tar,
    edit_json,
    hard_mapping,
    job_ids,
    read_json,
    rehash,
    run_meta_path,
)

from repxd.errors import LabError, SelectionError
from repxd.lab import verification
from repxd.lab.graph import JobStatus, Outcome, closure, select, statuses, topological_order
from repxd.lab.loader import load_lab
from repxd.lab.model import Lab

JOB_DIR_RE = re.compile(r"^[01][0-9abcdfghijklmnpqrsvwxyz]{31}-(?P<pname>[a-z]+)-(?P<version>[0-9.]+)$")


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return build_lab(tmp_path / "lab")


@pytest.fixture
def lab(lab_dir: Path) -> Lab:
    return load_lab(lab_dir)


def lab_error(path: Path, *words: str, **kwargs) -> str:
    """Load `path`, expect a LabError whose message is one line containing every word (any case)."""
    with pytest.raises(LabError) as info:
        load_lab(path, **kwargs)
    message = str(info.value)
    assert message.strip(), "empty LabError message"
    assert "\n" not in message, f"LabError message is not one line: {message!r}"
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


def ids_by_pname(lab: Lab, pname: str) -> list[str]:
    return [j for j in lab.jobs if JOB_DIR_RE.match(j)["pname"] == pname]


# ---- valid Labs ------------------------------------------------------------------------------


def test_directory_lab_loads(lab_dir: Path, lab: Lab) -> None:
    assert lab.root == lab_dir.resolve()
    assert list(lab.runs) == list(RUNS)
    assert len(lab.jobs) == JOB_COUNT
    assert lab.groups == GROUPS
    assert len(lab.lab_id) == 32
    assert lab.root_metadata.gitHash == "ab" * 20
    assert [len(lab.runs[r].job_ids) for r in RUNS] == [3, 1, 5]
    assert {j.run for j in lab.jobs.values()} == set(RUNS)
    assert lab.runs["analysis"].dependencies == {"simulation": "hard"}
    assert lab.runs["analysis"].image is not None and lab.runs["analysis"].image.startswith("images/")
    assert lab.image_of(ids_by_pname(lab, "report")[0]) == lab.runs["analysis"].image
    assert lab.runs["simulation"].image is None
    assert lab.runs["simulation"].metadata_path == "revision/metadata-simulation.json"


def test_tar_lab_loads(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    lab = load_lab(tar, unpack_dir=tmp_path / "unpack")
    assert lab.root.name == "result"
    assert lab.root.is_relative_to((tmp_path / "unpack").resolve())
    assert list(lab.runs) == list(RUNS)
    assert len(lab.jobs) == JOB_COUNT
    assert lab.groups == GROUPS
    # A second load reuses the unpacked tree.
    again = load_lab(tar, unpack_dir=tmp_path / "unpack")
    assert again.root == lab.root
    assert again.lab_id == lab.lab_id


def test_tar_lab_without_prefix_loads(tmp_path: Path) -> None:
    tree = build_lab(tmp_path / "tree")
    tar = tmp_path / "flat.tar"
    with tarfile.open(tar, "w") as tf:
        for child in sorted(tree.iterdir()):
            tf.add(child, arcname=child.name)
    lab = load_lab(tar, unpack_dir=tmp_path / "unpack")
    assert len(lab.jobs) == JOB_COUNT


def test_tar_lab_needs_unpack_dir(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    lab_error(tar, "tar Lab", "unpack directory")


def test_deps_computed_from_inputs(lab: Lab) -> None:
    (produce,) = ids_by_pname(lab, "produce")
    (square,) = ids_by_pname(lab, "square")
    (total,) = ids_by_pname(lab, "total")
    (report,) = ids_by_pname(lab, "report")
    (collect,) = ids_by_pname(lab, "collect")
    partitions = ids_by_pname(lab, "partition")
    generates = ids_by_pname(lab, "generate")
    assert lab.jobs[produce].deps == ()
    assert lab.jobs[square].deps == (produce,)
    assert lab.jobs[total].deps == (square,)
    # Inter-run mappings carry no job id: the run dependency does not become a job dependency.
    assert lab.jobs[report].deps == ()
    assert set(lab.jobs[collect].deps) == set(partitions)
    assert {d for p in partitions for d in lab.jobs[p].deps} == set(generates)
    assert all(not job.soft_deps for job in lab.jobs.values())
    for job_id, job in lab.jobs.items():
        recorded = json.loads((lab.root / "jobs" / job_id / "nix-input-dependencies.json").read_text())
        # As repx-expand: a first stage of a dependent run lists (and hashes) the other run's jobs there.
        expected = [j for j, other in lab.jobs.items() if other.run == "simulation"] if job_id == report else job.deps
        assert sorted(set(expected)) == sorted(set(recorded))


def test_soft_dependency(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")
    edit_json(run_meta_path(lab_dir, "simulation"),
              lambda m: m["jobs"][ids["total"]]["executables"]["main"]["inputs"][0].update(dependency_type="soft"))
    rehash(lab_dir)
    lab = load_lab(lab_dir)
    assert lab.jobs[ids["total"]].deps == (ids["square"],)
    assert lab.jobs[ids["total"]].soft_deps == {ids["square"]}


def test_job_ids_are_content_addressed_names(lab: Lab) -> None:
    for job_id, job in lab.jobs.items():
        m = JOB_DIR_RE.match(job_id)
        assert m, job_id
        assert job_id[0] in "01"
        assert len(job_id.split("-", 1)[0]) == 32
        assert job.name == f"{m['pname']}-{m['version']}"
        assert (lab.root / "jobs" / job_id).is_dir()


def test_scatter_gather_job(lab: Lab) -> None:
    for job_id in ids_by_pname(lab, "partition"):
        job = lab.jobs[job_id]
        assert job.is_scatter_gather
        assert set(job.executables) == {"scatter", "step-square", "step-shift", "gather"}
        assert job.executables["step-shift"].deps == ("square",)
        assert job.outputs == {"sum": "$out/sum.txt"}


def test_resource_hints(lab: Lab) -> None:
    (produce,) = ids_by_pname(lab, "produce")
    (square,) = ids_by_pname(lab, "square")
    assert lab.jobs[produce].resource_hints == {"mem": "64M", "cpus": 2, "time": "00:01:00"}
    assert lab.jobs[square].resource_hints == {}


def test_verify_false_skips_hashing(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = lab_dir / "readme" / "README.md"
    readme.write_text("changed after the build\n")
    lab_error(lab_dir, "readme/README.md", "SHA-256")
    calls = []
    monkeypatch.setattr(verification, "sha256_of", lambda path: calls.append(path) or "0" * 64)
    lab = load_lab(lab_dir, verify=False)
    assert len(lab.jobs) == JOB_COUNT
    assert calls == []


def test_verify_hashes_every_listed_file(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = {e["path"] for e in read_json(lab_dir / MANIFEST)["files"]}
    seen = []
    real = verification.sha256_of
    monkeypatch.setattr(verification, "sha256_of", lambda path: seen.append(path) or real(path))
    load_lab(lab_dir)
    assert {p.relative_to(lab_dir.resolve()).as_posix() for p in seen} == listed


def test_manifest_name_with_prefix_is_accepted(lab_dir: Path) -> None:
    (lab_dir / MANIFEST).rename(lab_dir / "lab" / "xyz-lab-metadata.json")
    assert len(load_lab(lab_dir).jobs) == JOB_COUNT


def test_legacy_image_dir_is_accepted(lab_dir: Path) -> None:
    image = lab_dir / read_json(run_meta_path(lab_dir, "analysis"))["image"]
    legacy = image / "image"
    legacy.mkdir()
    for child in list(image.iterdir()):
        if child != legacy:
            child.rename(legacy / child.name)
    assert len(load_lab(lab_dir, verify=False).jobs) == JOB_COUNT


def test_unknown_keys_are_ignored(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")

    def add_keys(meta: dict) -> None:
        meta["future_key"] = {"x": 1}
        meta["jobs"][ids["square"]]["new_field"] = [1, 2]
        meta["jobs"][ids["square"]]["executables"]["main"]["inputs"][0]["extra"] = "y"

    edit_json(run_meta_path(lab_dir, "simulation"), add_keys)
    rehash(lab_dir)
    assert len(load_lab(lab_dir).jobs) == JOB_COUNT


# ---- malformed Labs: files and hashes --------------------------------------------------------


def test_sha256_mismatch(lab_dir: Path) -> None:
    script = lab_dir / "jobs" / job_ids(lab_dir, "simulation")["produce"] / "bin" / "produce"
    data = bytearray(script.read_bytes())
    data[-2] ^= 0x01
    script.write_bytes(bytes(data))
    message = lab_error(lab_dir, "SHA-256", "bin/produce", "manifest")
    assert "--no-verify" in message


def test_listed_file_missing(lab_dir: Path) -> None:
    (lab_dir / "readme" / "README.md").unlink()
    lab_error(lab_dir, "readme/README.md", "missing")


@pytest.mark.parametrize("bad", ["../outside.txt", "jobs/../../outside.txt", "/etc/passwd"])
@pytest.mark.parametrize("verify", [True, False])
def test_manifest_path_escaping(lab_dir: Path, bad: str, verify: bool) -> None:
    edit_json(lab_dir / MANIFEST, lambda m: m["files"].append({"path": bad, "sha256": "0" * 64}))
    lab_error(lab_dir, repr(bad), "relative", "inside the Lab", verify=verify)


@pytest.mark.parametrize("bad", ["../revision/metadata-top.json", "/etc/passwd"])
def test_manifest_metadata_path_escaping(lab_dir: Path, bad: str) -> None:
    edit_json(lab_dir / MANIFEST, lambda m: m.update(metadata=bad))
    lab_error(lab_dir, "metadata", repr(bad), "relative", verify=False)


def test_symlink_outside_lab_when_verifying(lab_dir: Path, tmp_path: Path) -> None:
    readme = lab_dir / "readme" / "README.md"
    outside = tmp_path / "outside.md"
    outside.write_bytes(readme.read_bytes())  # same content: the hash alone would not notice
    readme.unlink()
    readme.symlink_to(outside)
    lab_error(lab_dir, "readme/README.md", "symlink", "outside the Lab")


def test_symlink_to_missing_target_outside_lab(lab_dir: Path, tmp_path: Path) -> None:
    readme = lab_dir / "readme" / "README.md"
    readme.unlink()
    readme.symlink_to(tmp_path / "does-not-exist")
    lab_error(lab_dir, "readme/README.md", "outside the Lab")


def test_symlink_inside_lab_is_fine(lab_dir: Path) -> None:
    readme = lab_dir / "readme" / "README.md"
    copy = lab_dir / "readme" / "copy.md"
    shutil.copy(readme, copy)
    readme.unlink()
    readme.symlink_to("copy.md")
    assert len(load_lab(lab_dir).jobs) == JOB_COUNT


def test_executable_symlink_outside_lab_without_verify(lab_dir: Path, tmp_path: Path) -> None:
    script = lab_dir / "jobs" / job_ids(lab_dir, "simulation")["produce"] / "bin" / "produce"
    outside = tmp_path / "evil.sh"
    outside.write_bytes(script.read_bytes())
    outside.chmod(0o755)
    script.unlink()
    script.symlink_to(outside)
    lab_error(lab_dir, "produce", "symlink", "outside the Lab", verify=False)
    lab_error(lab_dir, "produce", "symlink", "outside the Lab", verify=True)


def test_job_directory_symlinked_outside_lab(lab_dir: Path, tmp_path: Path) -> None:
    job = job_ids(lab_dir, "simulation")["produce"]
    moved = tmp_path / "moved-job"
    shutil.move(lab_dir / "jobs" / job, moved)
    (lab_dir / "jobs" / job).symlink_to(moved)
    lab_error(lab_dir, "produce", "outside the Lab", verify=False)


# ---- malformed Labs: tar members -------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "link", "words"),
    [
        ("result/../x", None, ["'result/../x'", "escapes"]),
        ("../x", None, ["'../x'", "escapes"]),
        ("/tmp/x", None, ["'/tmp/x'", "escapes"]),
        ("result/evil", "/etc/passwd", ["'result/evil'", "/etc/passwd", "outside the Lab"]),
        ("result/evil", "../../x", ["'result/evil'", "../../x", "outside the Lab"]),
        ("result/jobs/evil", "../../../x", ["'result/jobs/evil'", "outside the Lab"]),
    ],
)
def test_tar_member_escaping(tmp_path: Path, member: str, link: str | None, words: list[str]) -> None:
    _check_escaping_member(tmp_path, member, link, words)


def test_tar_member_written_through_a_symlink(tmp_path: Path) -> None:
    """`a/b -> ..` stays inside, but `a/b/c -> ../..` then lands two levels above the root: a
    lexical check of each link alone misses it; Python's extraction filters (absent on Debian's
    3.11.2) would catch it, so our own check must."""
    tar = build_tar(tmp_path / "lab.tar")
    add_tar_member(tar, "result/a/b", symlink_to="..")
    add_tar_member(tar, "result/a/b/c", symlink_to="../..")
    lab_error(tar, "'result/a/b/c'", "beneath a symbolic link", "refusing to unpack", unpack_dir=tmp_path / "unpack")
    assert not any((tmp_path / "unpack").glob("*/result/lab")), "nothing may be unpacked"


def _check_escaping_member(tmp_path: Path, member: str, link: str | None, words: list[str]) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    add_tar_member(tar, member, symlink_to=link)
    lab_error(tar, *words, "refusing to unpack", unpack_dir=tmp_path / "unpack")
    assert not (tmp_path / "x").exists()
    assert not any((tmp_path / "unpack").glob("*/result/lab")), "nothing may be unpacked"


def test_tar_hardlink_escaping(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    add_tar_member(tar, "result/hard", hardlink_to="../outside")
    lab_error(tar, "'result/hard'", "outside the Lab", unpack_dir=tmp_path / "unpack")


def test_tar_hardlink_to_missing_member(tmp_path: Path) -> None:
    # Found by the fuzz test: tarfile raised KeyError("linkname ... not found") from extractall().
    tar = build_tar(tmp_path / "lab.tar")
    add_tar_member(tar, "result/new", hardlink_to="README.md")
    lab_error(tar, "hard link", "missing from the tar", unpack_dir=tmp_path / "unpack")
    assert list((tmp_path / "unpack").iterdir()) == []


def test_tar_device_member(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    info = tarfile.TarInfo("result/fifo")
    info.type = tarfile.FIFOTYPE
    with tarfile.open(tar, "a") as tf:
        tf.addfile(info)
    lab_error(tar, "'result/fifo'", "fifo", unpack_dir=tmp_path / "unpack")


def test_tar_without_manifest(tmp_path: Path) -> None:
    tar = tmp_path / "empty.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("result/readme/README.md")
        tf.addfile(info)
    lab_error(tar, "no lab/*lab-metadata.json", unpack_dir=tmp_path / "unpack")


def test_not_a_tar(tmp_path: Path) -> None:
    bogus = tmp_path / "lab.tar"
    bogus.write_text("not a tar at all\n" * 100)
    lab_error(bogus, "neither a Lab directory nor a readable tar", unpack_dir=tmp_path / "unpack")


@pytest.mark.parametrize("keep", [1, 600, 2048, 2561, -700, -1])
def test_truncated_tar(tmp_path: Path, keep: int) -> None:
    # Found by the fuzz test: tarfile.ReadError escaped from getmembers()/extractall().
    tar = build_tar(tmp_path / "lab.tar")
    content = tar.read_bytes()
    tar.write_bytes(content[:keep] if keep > 0 else content[: len(content) + keep - 10240])
    lab_error(tar, "lab.tar", unpack_dir=tmp_path / "unpack")


@pytest.mark.parametrize("compression", ["gz", "xz", "bz2"])
def test_compressed_tar_lab(tmp_path: Path, compression: str) -> None:
    plain = build_tar(tmp_path / "lab.tar")
    packed = tmp_path / f"lab.tar.{compression}"
    with tarfile.open(plain) as src, tarfile.open(packed, f"w:{compression}") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    assert len(load_lab(packed, unpack_dir=tmp_path / "unpack").jobs) == JOB_COUNT
    content = packed.read_bytes()
    truncated = tmp_path / f"cut.tar.{compression}"
    truncated.write_bytes(content[: len(content) // 2])
    lab_error(truncated, "cut.tar", unpack_dir=tmp_path / "unpack")


def test_failed_unpack_leaves_nothing_behind(tmp_path: Path) -> None:
    # Found by the fuzz test: OSError from extractall() (here a file member over a directory).
    tar = build_tar(tmp_path / "lab.tar")
    add_tar_member(tar, "result/readme", data=b"a file where a directory was")
    unpack = tmp_path / "unpack"
    lab_error(tar, "lab.tar", "could not be unpacked", unpack_dir=unpack)
    assert list(unpack.iterdir()) == []


def test_tar_member_checks_apply_to_reused_unpack(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "lab.tar")
    assert load_lab(tar, unpack_dir=tmp_path / "unpack")
    add_tar_member(tar, "../x")
    lab_error(tar, "escapes", unpack_dir=tmp_path / "unpack")


# ---- malformed Labs: structure ---------------------------------------------------------------


def test_lab_path_missing(tmp_path: Path) -> None:
    lab_error(tmp_path / "nope", "not found", "does not exist")


def test_missing_manifest(lab_dir: Path) -> None:
    (lab_dir / MANIFEST).unlink()
    lab_error(lab_dir, "not a Lab", "lab-metadata.json")


def test_missing_lab_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    lab_error(tmp_path / "empty", "not a Lab", "lab-metadata.json")


@pytest.mark.parametrize("verify", [True, False])
def test_missing_job_directory(lab_dir: Path, verify: bool) -> None:
    job = job_ids(lab_dir, "simulation")["square"]
    shutil.rmtree(lab_dir / "jobs" / job)
    rehash(lab_dir)
    lab_error(lab_dir, job, "no directory", "incomplete", verify=verify)


@pytest.mark.parametrize("verify", [True, False])
def test_missing_executable(lab_dir: Path, verify: bool) -> None:
    job = job_ids(lab_dir, "simulation")["total"]
    (lab_dir / "jobs" / job / "bin" / "total").unlink()
    rehash(lab_dir)
    lab_error(lab_dir, job, "bin/total", "missing", verify=verify)


def test_non_executable_executable(lab_dir: Path) -> None:
    job = job_ids(lab_dir, "simulation")["total"]
    (lab_dir / "jobs" / job / "bin" / "total").chmod(0o644)
    lab_error(lab_dir, job, "bin/total", "not executable", "644")


def test_executable_is_a_directory(lab_dir: Path) -> None:
    job = job_ids(lab_dir, "simulation")["total"]
    exe = lab_dir / "jobs" / job / "bin" / "total"
    exe.unlink()
    exe.mkdir()
    rehash(lab_dir)
    lab_error(lab_dir, "bin/total", "missing")


def test_input_mapping_names_unknown_job(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")
    ghost = "1" * 32 + "-ghost-1.0"
    edit_json(run_meta_path(lab_dir, "simulation"),
              lambda m: m["jobs"][ids["total"]]["executables"]["main"]["inputs"][0].update(job_id=ghost))
    rehash(lab_dir)
    lab_error(lab_dir, ids["total"], ghost, "'squares'", "not in this Lab")


def test_dependency_cycle(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")
    edit_json(run_meta_path(lab_dir, "simulation"),
              lambda m: m["jobs"][ids["produce"]]["executables"]["main"]["inputs"].append(
                  hard_mapping(ids["square"], "squares", "loop")))
    rehash(lab_dir)
    message = lab_error(lab_dir, "cycle", "DAG")
    assert ids["produce"] in message and ids["square"] in message


def test_self_dependency_cycle(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")
    edit_json(run_meta_path(lab_dir, "simulation"),
              lambda m: m["jobs"][ids["produce"]]["executables"]["main"]["inputs"].append(
                  hard_mapping(ids["produce"], "numbers", "me")))
    rehash(lab_dir)
    lab_error(lab_dir, "cycle", verify=False)


def test_group_names_unknown_run(lab_dir: Path) -> None:
    edit_json(lab_dir / "revision" / "metadata-top.json", lambda m: m["groups"]["all"].append("ghost-run"))
    rehash(lab_dir)
    lab_error(lab_dir, "group 'all'", "'ghost-run'", "not a run")


def test_run_dependency_on_a_run_the_lab_lacks_is_a_warning(lab_dir: Path) -> None:
    """Upstream's per-run Labs (`runs.<name>`) hold one run; its loader (lab.rs) does not refuse a
    dependency on a run that is absent, so ours loads it, drops the edge and says so."""
    edit_json(run_meta_path(lab_dir, "analysis"),
              lambda m: m.update(dependencies={"revision/metadata-ghost.json": "hard"}))
    rehash(lab_dir)
    lab = load_lab(lab_dir)
    assert lab.runs["analysis"].dependencies == {}
    assert any("revision/metadata-ghost.json" in w and "'analysis'" in w for w in lab.warnings)


def test_values_upstream_accepts_load(lab_dir: Path) -> None:
    """Upstream's model.rs: `Job.params` is any JSON value, `Job.name` is optional, a run's
    `dependencies` map to any string; parameters.json gets the value exactly as written."""
    def change(meta):
        job = next(iter(meta["jobs"].values()))
        job["params"] = [1, 2]
        job.pop("name")
        meta["dependencies"] = {}
    edit_json(run_meta_path(lab_dir, "simulation"), change)
    rehash(lab_dir)
    lab = load_lab(lab_dir)
    job = lab.jobs[lab.runs["simulation"].job_ids[0]]
    assert job.spec.params == [1, 2] and job.params == {}
    assert job.name == job.id.partition("-")[2]


def test_run_dependency_by_run_name_is_accepted(lab_dir: Path) -> None:
    edit_json(run_meta_path(lab_dir, "analysis"), lambda m: m.update(dependencies={"simulation": "soft"}))
    rehash(lab_dir)
    assert load_lab(lab_dir).runs["analysis"].dependencies == {"simulation": "soft"}


def test_run_metadata_file_missing(lab_dir: Path) -> None:
    run_meta_path(lab_dir, "sweep").unlink()
    rehash(lab_dir)
    lab_error(lab_dir, "revision/metadata-sweep.json", "missing")


def test_duplicate_run_name(lab_dir: Path) -> None:
    edit_json(run_meta_path(lab_dir, "sweep"), lambda m: m.update(name="simulation"))
    rehash(lab_dir)
    lab_error(lab_dir, "'simulation'", "twice")


def test_job_in_two_runs(lab_dir: Path) -> None:
    sim = read_json(run_meta_path(lab_dir, "simulation"))
    produce = job_ids(lab_dir, "simulation")["produce"]
    edit_json(run_meta_path(lab_dir, "sweep"), lambda m: m["jobs"].update({produce: sim["jobs"][produce]}))
    rehash(lab_dir)
    lab_error(lab_dir, produce, "unique")


def test_image_without_manifest(lab_dir: Path) -> None:
    image = read_json(run_meta_path(lab_dir, "analysis"))["image"]
    (lab_dir / image / "manifest.json").unlink()
    rehash(lab_dir)
    lab_error(lab_dir, "'analysis'", image, "no manifest.json")


def test_scatter_gather_missing_gather(lab_dir: Path) -> None:
    (partition,) = [j for j in read_json(run_meta_path(lab_dir, "sweep"))["jobs"] if "-partition-" in j][:1]
    edit_json(run_meta_path(lab_dir, "sweep"), lambda m: m["jobs"][partition]["executables"].pop("gather"))
    rehash(lab_dir)
    lab_error(lab_dir, partition, "scatter", "gather")


def test_scatter_gather_unknown_step_dep(lab_dir: Path) -> None:
    partition = job_ids(lab_dir, "sweep")["partition"]
    edit_json(run_meta_path(lab_dir, "sweep"),
              lambda m: m["jobs"][partition]["executables"]["step-shift"].update(deps=["nope"]))
    rehash(lab_dir)
    lab_error(lab_dir, partition, "'step-shift'", "unknown step 'nope'")


# ---- malformed Labs: JSON --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [MANIFEST, "revision/metadata-top.json", "revision/metadata-simulation.json"],
)
@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe{}", b'{"a": 1'])
def test_invalid_json(lab_dir: Path, rel: str, content: bytes) -> None:
    (lab_dir / rel).write_bytes(content)
    if rel != MANIFEST:
        rehash(lab_dir)
    lab_error(lab_dir, rel, "JSON")


@pytest.mark.parametrize(
    ("rel", "change", "words"),
    [
        (MANIFEST, lambda m: m.update(files={}), ["files", "array"]),
        (MANIFEST, lambda m: m["files"][0].update(sha256="XYZ"), ["files.0.sha256", "pattern"]),
        (MANIFEST, lambda m: m.pop("labId"), ["labId", "required"]),
        (MANIFEST, lambda m: m.update(metadata=7), ["metadata", "string"]),
        ("revision/metadata-top.json", lambda m: m.update(runs="revision/metadata-simulation.json"), ["runs", "array"]),
        ("revision/metadata-top.json", lambda m: m.pop("gitHash"), ["gitHash", "required"]),
        ("revision/metadata-top.json", lambda m: m.update(groups=["all"]), ["groups", "object"]),
        ("revision/metadata-top.json", lambda m: m.update(type="run"), ["type", "root"]),
        ("revision/metadata-simulation.json", lambda m: m.update(jobs=[]), ["jobs", "object"]),
        ("revision/metadata-simulation.json", lambda m: m.update(name=None), ["name", "string"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values())).update(stage_type="parallel"), ["stage_type", "simple"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values()))["resource_hints"].update(cpus="many"), ["cpus", "integer"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values()))["executables"]["main"].update(inputs={}), ["inputs", "array"]),
        ("revision/metadata-simulation.json",
         lambda m: list(m["jobs"].values())[1]["executables"]["main"]["inputs"][0].pop("target_input"),
         ["target_input", "required"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values())).pop("executables"), ["executables", "required"]),
    ],
)
def test_field_of_wrong_type(lab_dir: Path, rel: str, change, words: list[str]) -> None:
    edit_json(lab_dir / rel, change)
    if rel != MANIFEST:
        rehash(lab_dir)
    lab_error(lab_dir, rel, *words)


def test_wrong_type_message_counts_more_problems(lab_dir: Path) -> None:
    edit_json(lab_dir / "revision" / "metadata-top.json", lambda m: m.update(runs=1, gitHash=2))
    rehash(lab_dir)
    lab_error(lab_dir, "metadata-top.json", "1 more problem")


def test_top_level_not_an_object(lab_dir: Path) -> None:
    (lab_dir / MANIFEST).write_text("[]")
    lab_error(lab_dir, MANIFEST, "(top level)")


def test_manifest_is_a_directory(lab_dir: Path) -> None:
    (lab_dir / MANIFEST).unlink()
    (lab_dir / MANIFEST).mkdir()
    lab_error(lab_dir, MANIFEST, "cannot read")


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize(
    ("rel", "change", "words"),
    [
        (MANIFEST, lambda m: m["files"].append({"path": "readme/a\x00b", "sha256": "0" * 64}), ["NUL", "lists"]),
        (MANIFEST, lambda m: m.update(metadata="revision/\x00"), ["NUL", "metadata"]),
        ("revision/metadata-top.json", lambda m: m["runs"].append("revision/\x00.json"), ["NUL", "runs"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values()))["executables"]["main"].update(path="jobs/\x00"), ["NUL", "executable"]),
        ("revision/metadata-simulation.json",
         lambda m: m["jobs"].update({"a\x00b": m["jobs"].pop(list(m["jobs"])[-1])}), ["NUL", "job id"]),
        ("revision/metadata-analysis.json", lambda m: m.update(image="images/\x00"), ["NUL", "image"]),
    ],
)
def test_path_with_nul_byte(lab_dir: Path, rel: str, change, words: list[str], verify: bool) -> None:
    # Found by the fuzz test: os.path.realpath and open() raise ValueError on NUL bytes.
    edit_json(lab_dir / rel, change)
    if rel != MANIFEST:
        rehash(lab_dir)
    lab_error(lab_dir, *words, verify=verify)


LONG = "x" * 300  # longer than NAME_MAX: pathlib's is_file()/is_dir() raise OSError instead of answering False


@pytest.mark.parametrize(
    ("rel", "change", "words"),
    [
        (MANIFEST, lambda m: m.update(metadata=f"revision/{LONG}"), ["metadata", "missing"]),
        ("revision/metadata-top.json", lambda m: m["runs"].insert(0, LONG), ["runs", "missing"]),
        ("revision/metadata-simulation.json",
         lambda m: next(iter(m["jobs"].values()))["executables"]["main"].update(path=f"jobs/{LONG}/x"),
         ["executable", "missing"]),
        ("revision/metadata-simulation.json",
         lambda m: m["jobs"].update({LONG: m["jobs"].pop(list(m["jobs"])[-1])}), ["no directory"]),
        ("revision/metadata-analysis.json", lambda m: m.update(image=f"images/{LONG}"), ["image", "no manifest.json"]),
    ],
)
def test_path_with_overlong_name(lab_dir: Path, rel: str, change, words: list[str]) -> None:
    # Found by the fuzz test: an OSError (ENAMETOOLONG) escaped the loader.
    edit_json(lab_dir / rel, change)
    if rel != MANIFEST:
        rehash(lab_dir)
    lab_error(lab_dir, *words)
    lab_error(lab_dir, *words, verify=False)


def test_lab_path_with_overlong_name(tmp_path: Path) -> None:
    lab_error(tmp_path / LONG, "not found")


# ---- graph: selectors, closure, order, status -------------------------------------------------


def test_select_run_name(lab: Lab) -> None:
    assert select(lab, ["simulation"]) == lab.runs["simulation"].job_ids
    assert select(lab, ["analysis", "simulation"]) == lab.runs["analysis"].job_ids + lab.runs["simulation"].job_ids


def test_select_group(lab: Lab) -> None:
    assert select(lab, ["@all"]) == lab.runs["simulation"].job_ids + lab.runs["analysis"].job_ids
    assert set(select(lab, ["@sweepers"])) == set(lab.runs["sweep"].job_ids)


def test_select_deduplicates(lab: Lab) -> None:
    assert select(lab, ["simulation", "@all"]) == lab.runs["simulation"].job_ids + lab.runs["analysis"].job_ids


def test_select_job_id_prefix(lab: Lab) -> None:
    for job_id in lab.jobs:
        unique = next(job_id[:n] for n in range(1, 33) if sum(j.startswith(job_id[:n]) for j in lab.jobs) == 1)
        assert select(lab, [unique]) == [job_id]
        assert select(lab, [job_id]) == [job_id]


def test_select_ambiguous_prefix_lists_candidates(lab: Lab) -> None:
    prefix = "1"
    matches = [j for j in lab.jobs if j.startswith(prefix)]
    assert len(matches) > 1
    with pytest.raises(SelectionError) as info:
        select(lab, [prefix])
    message = str(info.value)
    assert "ambiguous" in message and f"{len(matches)} jobs" in message
    for job_id in matches:
        assert job_id in message


def test_select_ambiguous_prefix_truncates_long_lists(lab: Lab) -> None:
    many = {f"1{n:031d}-x-1.0": lab.jobs[next(iter(lab.jobs))] for n in range(12)}
    lab.jobs.update(many)
    with pytest.raises(SelectionError) as info:
        select(lab, ["10"])
    assert "12 jobs" in str(info.value) and "…" in str(info.value)


@pytest.mark.parametrize("spec", ["nope", "zzzz", "@nope", "simulation2"])
def test_select_unknown(lab: Lab, spec: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(lab, [spec])
    assert repr(spec) in str(info.value)
    if spec.startswith("@"):
        assert "@all" in str(info.value) and "@sweepers" in str(info.value)
    else:
        assert "simulation" in str(info.value)


def test_select_nothing(lab: Lab) -> None:
    with pytest.raises(SelectionError, match="nothing selected"):
        select(lab, [])


def test_closure(lab: Lab) -> None:
    (total,) = ids_by_pname(lab, "total")
    (collect,) = ids_by_pname(lab, "collect")
    (report,) = ids_by_pname(lab, "report")
    assert closure(lab, [total]) == set(lab.runs["simulation"].job_ids)
    assert closure(lab, [collect]) == set(lab.runs["sweep"].job_ids)
    assert closure(lab, [report]) == {report}  # inter-run: no job dependency
    generates = ids_by_pname(lab, "generate")
    assert closure(lab, generates) == set(generates)
    assert closure(lab, []) == set()


def test_topological_order(lab: Lab) -> None:
    everything = list(lab.jobs)
    order = topological_order(lab, reversed(everything))
    assert sorted(order) == sorted(everything)
    position = {j: i for i, j in enumerate(order)}
    for job_id, job in lab.jobs.items():
        for dep in job.deps:
            assert position[dep] < position[job_id]
    # Stable: ties in Lab order, whatever the input order.
    assert topological_order(lab, everything) == order
    roots = [j for j in everything if not lab.jobs[j].deps]
    assert order[: len(roots)] == roots


def test_topological_order_of_subset(lab: Lab) -> None:
    (square,) = ids_by_pname(lab, "square")
    (total,) = ids_by_pname(lab, "total")
    assert topological_order(lab, {total, square}) == [square, total]


def test_statuses(lab: Lab) -> None:
    produce, square, total = (ids_by_pname(lab, p)[0] for p in ("produce", "square", "total"))
    (report,) = ids_by_pname(lab, "report")
    sim = lab.runs["simulation"].job_ids

    assert statuses(lab, sim, {}) == {produce: JobStatus.PENDING, square: JobStatus.BLOCKED, total: JobStatus.BLOCKED}
    assert statuses(lab, sim, {produce: Outcome.OK}) == {
        produce: JobStatus.SUCCEEDED, square: JobStatus.PENDING, total: JobStatus.BLOCKED}
    assert statuses(lab, sim, {produce: Outcome.OK, square: Outcome.FAIL}) == {
        produce: JobStatus.SUCCEEDED, square: JobStatus.FAILED, total: JobStatus.BLOCKED}
    assert statuses(lab, sim, dict.fromkeys(sim, Outcome.OK)) == dict.fromkeys(sim, JobStatus.SUCCEEDED)
    assert statuses(lab, [report], {}) == {report: JobStatus.PENDING}
    # The scheduler's view wins over evidence and readiness.
    active = {square: JobStatus.RUNNING, total: JobStatus.QUEUED}
    assert statuses(lab, sim, {produce: Outcome.OK, square: Outcome.FAIL}, active) == {
        produce: JobStatus.SUCCEEDED, square: JobStatus.RUNNING, total: JobStatus.QUEUED}


def test_statuses_ignore_soft_dependencies(lab_dir: Path) -> None:
    ids = job_ids(lab_dir, "simulation")
    edit_json(run_meta_path(lab_dir, "simulation"),
              lambda m: m["jobs"][ids["total"]]["executables"]["main"]["inputs"][0].update(dependency_type="soft"))
    lab = load_lab(lab_dir, verify=False)
    assert statuses(lab, [ids["total"]], {})[ids["total"]] is JobStatus.PENDING
    assert statuses(lab, [ids["total"]], {ids["square"]: Outcome.FAIL})[ids["total"]] is JobStatus.PENDING
    assert closure(lab, [ids["total"]]) == set(lab.runs["simulation"].job_ids)


def test_json_files_are_written_by_the_writer(lab_dir: Path) -> None:
    # Sanity check of the factory: the manifest lists every file but itself, sorted, with modes kept.
    listed = [e["path"] for e in read_json(lab_dir / MANIFEST)["files"]]
    on_disk = sorted(p.relative_to(lab_dir).as_posix() for p in lab_dir.rglob("*")
                     if p.is_file() and not p.relative_to(lab_dir).as_posix().startswith("lab/"))
    assert listed == on_disk
    for job_id in job_ids(lab_dir, "simulation").values():
        for exe in (lab_dir / "jobs" / job_id / "bin").iterdir():
            assert os.stat(exe).st_mode & 0o777 == 0o755
