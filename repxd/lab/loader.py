"""Loading and verifying Labs (lab-format §1–4), from a directory or a `.tar` of one.

Every problem becomes one `LabError` sentence naming the file and the fix."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import lzma
import mmap
import os
import shutil
import stat
import tarfile
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ValidationError

from ..errors import LabError
from . import schema, specs, tarsafe
from .digests import all_match
from .model import Job, Lab, Run
from .schema import RootMetadata, RunMetadata
from .specs import JobSpec, Manifest, RunSpec

MANIFEST_SUFFIX = "lab-metadata.json"
SMALL_FILE = 1 << 16  # files up to this size are hashed from one read
VERIFY_CHUNK = 256  # files per task when verifying
# What reading a damaged (possibly compressed) tar can raise besides TarError.
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def load_lab(path: str | os.PathLike, *, verify: bool = True, unpack_dir: Path | None = None) -> Lab:
    """Load the Lab at `path` (a directory or a `.tar`); tar Labs are unpacked into `unpack_dir`."""
    # Loading allocates millions of long-lived objects and no garbage cycles; with the cyclic GC on,
    # its collections rescan the growing heap again and again (a quarter of the time at 100k jobs).
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_lab(Path(path), verify, unpack_dir)
    finally:
        if gc_enabled:
            gc.enable()


def _load_lab(path: Path, verify: bool, unpack_dir: Path | None) -> Lab:
    if not _probe(path.exists):
        raise LabError(f"Lab not found: {path} does not exist (pass the directory `nix build` produced, or its .tar)")
    if path.is_file():
        if unpack_dir is None:
            raise LabError(f"{path} is a tar Lab; an unpack directory is needed to run it")
        path = unpack_tar_lab(path, unpack_dir)
    root = path.resolve()
    manifest_path = _find_manifest(root)
    manifest = _parse_manifest(manifest_path, root)
    listed_in = f"{_rel(manifest_path, root)} lists"
    for rel in manifest.paths():
        _check_relative(rel, listed_in)
    if verify:
        verify_files(root, manifest)
    root_meta_path = _lab_file(root, manifest.metadata, "the manifest's `metadata`")
    root_meta = _parse(RootMetadata, root_meta_path, root)
    return _assemble(root, manifest, root_meta)


def _assemble(root: Path, manifest: Manifest, root_meta: RootMetadata) -> Lab:
    runs: dict[str, Run] = {}
    run_metas: dict[str, RunSpec] = {}
    path_to_run: dict[str, str] = {}
    for rel in root_meta.runs:
        meta_path = _lab_file(root, rel, "revision/metadata-top.json `runs`")
        meta = _parse_run(meta_path, root)
        if meta.name in run_metas:
            raise LabError(f"{rel}: run name {meta.name!r} is used twice; each run needs its own name")
        run_metas[meta.name] = meta
        path_to_run[rel] = meta.name
    run_paths = {name: rel for rel, name in path_to_run.items()}

    specs: dict[str, tuple[str, JobSpec]] = {}
    warnings: list[str] = []
    for run_name, meta in run_metas.items():
        deps: dict[str, str] = {}
        for dep_path, kind in meta.dependencies.items():
            dep_run = path_to_run.get(dep_path) or (dep_path if dep_path in run_metas else None)
            if dep_run is None:
                # A per-run Lab (upstream's `runs.<name>`) keeps its run's dependencies but not the
                # runs themselves; upstream loads it and leaves their metadata inputs out.
                warnings.append(f"run {run_name!r} depends on {dep_path!r}, which this Lab does not contain "
                                "(a per-run Lab?); inputs from that run are left out")
                continue
            deps[dep_run] = "soft" if kind == "soft" else "hard"
        if meta.image is not None:
            _check_relative(meta.image, f"run {run_name!r} image")
            image_dir = root / meta.image
            if not (_probe((image_dir / "manifest.json").is_file) or _probe((image_dir / "image" / "manifest.json").is_file)):
                raise LabError(f"run {run_name!r}: image directory {meta.image} has no manifest.json")
        runs[run_name] = Run(run_name, run_paths[run_name], deps, meta.image, list(meta.jobs))
        for job_id, spec in meta.jobs.items():
            if job_id in specs:
                raise LabError(f"job {job_id} appears in runs {specs[job_id][0]!r} and {run_name!r}; job ids must be unique")
            specs[job_id] = (run_name, spec)
            _check_output_templates(job_id, spec)

    absent_runs = sorted({m.source_run for _, spec in specs.values() for exe in spec.executables.values()
                          for m in exe.inputs if m.source_run and m.source_run not in runs})
    for absent in absent_runs:
        warnings.append(f"jobs take the metadata of run {absent!r}, which this Lab does not contain "
                        "(a per-run Lab?); that input is left out, as upstream does")
    jobs = _resolve_dependencies(specs)
    _check_job_files(root, jobs)
    _check_acyclic(jobs)

    groups = dict(root_meta.groups)
    for group, members in groups.items():
        for member in members:
            if member not in runs:
                raise LabError(f"group {group!r} names run {member!r}, which is not a run of this Lab")
    return Lab(root, manifest, root_meta, runs, jobs, groups, warnings)


def _check_output_templates(job_id: str, spec: JobSpec) -> None:
    """An output template names a path inside the job's `$out` (upstream's rule: it starts with
    `$out/`); `..`, an absolute path or `$outer/` would hand a dependant (and `show output`) a
    path anywhere on the machine."""
    for exe_name, exe in spec.executables.items():
        for name, template in exe.outputs.items():
            if not isinstance(template, str) or (template.startswith("$out/") and ".." not in template):
                continue  # the common case, decided without building a PurePosixPath per output
            if not template.startswith("$out/") or ".." in PurePosixPath(template).parts:
                raise LabError(f"job {job_id} ({exe_name}) output {name!r} is {template!r}, which leaves $out; "
                               "output paths must stay inside the job's $out")


def _resolve_dependencies(specs: dict[str, tuple[str, JobSpec]]) -> dict[str, Job]:
    """Each job's dependencies (hard ones in mapping order, then soft ones sorted), one Job each."""
    jobs: dict[str, Job] = {}
    for job_id, (run_name, spec) in specs.items():
        hard: list[str] = []
        soft: set[str] = set()
        for exe_name, exe in spec.executables.items():
            for mapping in exe.inputs:
                dep = mapping.job_id
                if dep is None or dep == "self":
                    continue
                if dep not in specs:
                    raise LabError(
                        f"job {job_id} ({exe_name}) maps input {mapping.target_input!r} from job {dep}, "
                        "which is not in this Lab; rebuild the Lab so every referenced job is included"
                    )
                if mapping.dependency_type == "soft":
                    soft.add(dep)
                elif dep not in hard:
                    hard.append(dep)
        if soft:
            soft -= set(hard)
            jobs[job_id] = Job(job_id, run_name, spec, tuple(hard) + tuple(sorted(soft)), frozenset(soft))
        else:
            jobs[job_id] = Job(job_id, run_name, spec, tuple(hard))
    return jobs


def _check_job_files(root: Path, jobs: dict[str, Job]) -> None:
    plain = _PlainTree(root)
    plain.scan("jobs")
    for job_id, job in jobs.items():
        _check_relative(job_id, "job id")
        if not (plain.is_dir(f"jobs/{job_id}") or _probe((root / "jobs" / job_id).is_dir)):
            raise LabError(f"job {job_id} has no directory jobs/{job_id} in the Lab; the Lab is incomplete")
        for exe_name, exe in job.executables.items():
            exe_path = plain.file(exe.path) or _lab_file(root, exe.path, f"job {job_id} executable {exe_name!r}")
            if not os.access(exe_path, os.X_OK):
                raise LabError(f"job {job_id} executable {exe.path} is not executable (mode {os.stat(exe_path).st_mode & 0o777:o})")
        if job.is_scatter_gather:
            names = set(job.executables)
            if not {"scatter", "gather"} <= names or not any(n.startswith("step-") for n in names):
                raise LabError(f"scatter-gather job {job_id} needs executables scatter, step-<name> and gather; it has {sorted(names)}")
            for exe_name, exe in job.executables.items():
                for dep in exe.deps:
                    if f"step-{dep}" not in names and dep not in names:
                        raise LabError(f"job {job_id} step {exe_name!r} depends on unknown step {dep!r}")


def _check_acyclic(jobs: dict[str, Job]) -> None:
    indegree = {job_id: len(job.deps) for job_id, job in jobs.items()}
    dependents: dict[str, list[str]] = {job_id: [] for job_id in jobs}
    for job_id, job in jobs.items():
        for dep in job.deps:
            dependents[dep].append(job_id)
    queue = deque(j for j, n in indegree.items() if n == 0)
    seen = 0
    while queue:
        current = queue.popleft()
        seen += 1
        for child in dependents[current]:
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if seen != len(jobs):
        cycle = sorted(j for j, n in indegree.items() if n > 0)
        shown = ", ".join(cycle[:4]) + (" …" if len(cycle) > 4 else "")
        raise LabError(f"the jobs' dependencies form a cycle ({len(cycle)} jobs involved: {shown}); a Lab must be a DAG")


# ---- files ---------------------------------------------------------------------------------


def _find_manifest(root: Path) -> Path:
    lab_dir = root / "lab"
    candidates = sorted(lab_dir.glob(f"*{MANIFEST_SUFFIX}")) if lab_dir.is_dir() else []
    if not candidates:
        raise LabError(f"{root} is not a Lab: no lab/*{MANIFEST_SUFFIX} manifest (is this the output of `nix build`?)")
    return candidates[0]


class _PlainTree:
    """The fast path of `_lab_file` and `is_dir` for what Nix builds: paths of plain names (no "",
    ".", ".." or dot-files) through real directories, no symlinks. One lstat per path component
    not seen before, instead of `realpath`'s lstat of every component from `/`. Whatever it
    cannot vouch for (symlinks, missing files, unusual names) gets a falsy answer, and the caller
    takes the exact slow path, with its error messages."""

    def __init__(self, root: Path) -> None:
        self.prefix = os.path.join(root, "")  # root is resolved: no symlinks up to here
        self.dirs: set[str] = set()  # relative paths known to be directories reached without symlinks

    def _mode(self, rel: str) -> int:
        try:
            return os.lstat(self.prefix + rel).st_mode
        except (OSError, ValueError):
            return 0

    def _dir(self, rel: str) -> bool:
        if rel in self.dirs:
            return True
        parent = rel.rpartition("/")[0]
        if (parent and not self._dir(parent)) or not stat.S_ISDIR(self._mode(rel)):
            return False
        self.dirs.add(rel)
        return True

    def scan(self, rel: str) -> None:
        """Learn the subdirectories of directory `rel` from one listing (no lstat per entry)."""
        if not (_plain(rel) and self._dir(rel)):
            return
        with contextlib.suppress(OSError), os.scandir(self.prefix + rel) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    self.dirs.add(f"{rel}/{entry.name}")

    def is_dir(self, rel: str) -> bool:
        return _plain(rel) and self._dir(rel)

    def file(self, rel: str) -> str | None:
        """The path of regular file `rel` when it is reached without symlinks, else None."""
        if not _plain(rel):
            return None
        parent = rel.rpartition("/")[0]
        if (parent and not self._dir(parent)) or not stat.S_ISREG(self._mode(rel)):
            return None
        return self.prefix + rel


def _plain(rel: str) -> bool:
    return bool(rel) and rel[0] not in "/." and rel[-1] != "/" and "//" not in rel and "/." not in rel and "\x00" not in rel


def _check_relative(rel: str, what: str) -> None:
    if rel and rel[0] != "/" and ".." not in rel and "\x00" not in rel:
        return  # the common case, decided without building a PurePosixPath
    if "\x00" in rel:
        raise LabError(f"{what} path {rel!r} contains a NUL byte; fix the path in the Lab's metadata")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel == "":
        raise LabError(f"{what} path {rel!r} must be relative and stay inside the Lab (no '..', no leading '/')")


def _lab_file(root: Path, rel: str, what: str) -> Path:
    _check_relative(rel, what)
    path = root / rel
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise LabError(f"{what}: {rel} is a symlink leading outside the Lab ({real}); Labs must be self-contained")
    if not _probe(real.is_file):
        raise LabError(f"{what}: {rel} is missing from the Lab")
    return path


def _probe(test) -> bool:
    """A pathlib test (`exists`, `is_file`, `is_dir`); a name the OS rejects (too long...) is absent."""
    try:
        return test()
    except OSError:
        return False


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _parse_manifest(path: Path, root: Path) -> Manifest:
    data = _read(path, root)
    try:
        return Manifest.decode(data)
    except specs.Refused:
        pydantic = _parse(schema.Manifest, path, root, data)
        return Manifest(pydantic.labId, pydantic.metadata, pydantic.lab_version,
                        [f.path for f in pydantic.files], [f.sha256 for f in pydantic.files])


def _parse_run(path: Path, root: Path) -> RunSpec:
    # Mapped rather than read: the pages already decoded are dropped as decoding goes on, so a
    # 100 MB file and the jobs made from it are not both resident at the end.
    try:
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, not a regular file, unreadable: read below, as ever
        mapped = None
    try:
        if mapped is not None:
            return specs.decode_run(mapped, lambda n: mapped.madvise(mmap.MADV_DONTNEED, 0, n))
        return specs.decode_run(_read(path, root))
    except specs.Refused:
        return specs.from_model(_parse(RunMetadata, path, root))
    finally:
        if mapped is not None:
            mapped.close()


def _read(path: Path, root: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LabError(f"{_rel(path, root)}: cannot read: {exc.strerror}") from None


def _parse(model: type[BaseModel], path: Path, root: Path, data: bytes | None = None):
    try:
        return model.model_validate_json(path.read_bytes() if data is None else data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise LabError(f"{_rel(path, root)}: {where}: {err['msg']}{more}") from None
    except OSError as exc:
        raise LabError(f"{_rel(path, root)}: cannot read: {exc.strerror}") from None


def sha256_of(path: Path) -> str:
    with open(path, "rb", buffering=0) as fh:
        if os.fstat(fh.fileno()).st_size <= SMALL_FILE:
            # file_digest allocates a 256 KiB buffer per call: for the many tiny files of a Lab
            # (scripts, parameters) that allocation costs more than the hashing.
            return hashlib.sha256(fh.readall()).hexdigest()
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_files(root: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its SHA-256, in parallel. Many files are hashed
    by coreutils first; any doubt (a mismatch, a symlink, a file it could not read) is settled
    file by file below, which also names the first problem in manifest order."""
    if len(manifest.files) >= BATCH_HASH_MIN and _all_match_in_batch(root, manifest):
        return
    _verify_each(root, manifest)


BATCH_HASH_MIN = 2000
# Files handed to sha256sum at once: names and digests of all 300,000 files of a 100,000-job Lab,
# with what sha256sum reads and answers, held ~300 MB at once; 8,192 at a time, a few MB.
BATCH_FILES = 8192


def _all_match_in_batch(root: Path, manifest: Manifest) -> bool:
    base = str(root)
    count = len(manifest.files)
    with ThreadPoolExecutor(max_workers=1) as pool:
        for start in range(0, count, BATCH_FILES):
            batch = range(start, min(count, start + BATCH_FILES))
            paths = [f"{base}/{manifest.path_at(i)}" for i in batch]
            # sha256sum runs in subprocesses; this thread meanwhile looks for links.
            hashing = pool.submit(all_match, paths, [manifest.digest_at(i) for i in batch])
            try:
                linked = any(stat.S_ISLNK(os.lstat(p).st_mode) for p in paths)
            except OSError:
                linked = True
            try:
                matched = hashing.result()
            except OSError:
                return False
            # Links are checked file by file for leading outside the Lab.
            if not matched or linked:
                return False
    return True


def _verify_each(root: Path, manifest: Manifest) -> None:

    def check(entry) -> str | None:
        path = root / entry.path
        try:
            if path.is_symlink():
                real = Path(os.path.realpath(path))
                if real != root and root not in real.parents:
                    return f"{entry.path} is a symlink leading outside the Lab ({real}); Labs must be self-contained"
            digest = sha256_of(path)
        except FileNotFoundError:
            return f"{entry.path} is listed in the manifest but missing from the Lab"
        except OSError as exc:
            return f"{entry.path}: cannot read ({exc.strerror})"
        if digest != entry.sha256:
            return f"{entry.path} has SHA-256 {digest[:16]}…, the manifest says {entry.sha256[:16]}…; the Lab was modified or corrupted (rebuild it, or pass --no-verify to run it anyway)"
        return None

    def check_chunk(start: int) -> str | None:
        for entry in files[start:start + VERIFY_CHUNK]:
            problem = check(entry)
            if problem:
                return problem
        return None

    # One task per chunk of files: ThreadPoolExecutor.map ignores `chunksize`, and a future per
    # file costs more than hashing a small file. Chunks are checked in order, so the problem
    # reported is still the first in manifest order.
    files = manifest.files
    chunks = range(0, len(files), VERIFY_CHUNK)  # each made into entries by its worker
    workers = min(32, (os.cpu_count() or 2) * 4, max(1, len(chunks)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for problem in pool.map(check_chunk, chunks):
            if problem:
                raise LabError(problem)


# ---- tar Labs ------------------------------------------------------------------------------


# Bounds on what a tar may unpack to (a gzip bomb, a tar of countless empty files).
MAX_TAR_MEMBERS = 1_000_000
MAX_TAR_BYTES = 64 << 30


def unpack_tar_lab(tar_path: Path, unpack_dir: Path) -> Path:
    """Unpack a tar Lab after checking every member; returns the Lab root inside `unpack_dir`.

    The tree is keyed by the tar's content (its SHA-256), never by its name, size or mtime: a
    different tar never reuses or changes another's tree. It is unpacked into a temporary
    directory and renamed into place, so a tree under its key is always complete."""
    with _open_tar(tar_path) as tf:
        members = _checked_members(tf, tar_path)
        prefix = _tar_prefix(members, tar_path)
        dest = unpack_dir / f"{tar_path.name.split('.')[0]}-{sha256_of(tar_path)[:32]}"
        if not dest.is_dir():
            unpack_dir.mkdir(parents=True, exist_ok=True)
            # Per thread too: the daemon unpacks the same content for several submitters at once.
            tmp = unpack_dir / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.repx-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tarsafe.extract(tf, tmp, members)
                os.rename(tmp, dest)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if dest.is_dir():  # a concurrent unpack of the same content won the rename
                    return dest / prefix if prefix else dest
                raise LabError(f"{tar_path} could not be unpacked into {dest} ({_one_line(exc)}); copy or rebuild the tar, or free space there") from None
            except TAR_ERRORS as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise LabError(f"{tar_path} could not be unpacked into {dest} ({_one_line(exc)}); copy or rebuild the tar, or free space there") from None
            except KeyError as exc:  # tarfile: a hard link to a file that is not in the tar
                shutil.rmtree(tmp, ignore_errors=True)
                raise LabError(f"{tar_path} could not be unpacked: {exc.args[0]} (a hard link names a file missing from the tar); copy or rebuild the tar") from None
    return dest / prefix if prefix else dest


def _checked_members(tf: tarfile.TarFile, tar_path: Path) -> list[tarfile.TarInfo]:
    """Every member, checked, within MAX_TAR_MEMBERS and MAX_TAR_BYTES (read before unpacking)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        for m in tf:
            members.append(m)
            total += m.size if m.isfile() else 0
            if len(members) > MAX_TAR_MEMBERS:
                raise LabError(f"{tar_path} has more than {MAX_TAR_MEMBERS} members; a Lab tar this large is refused")
            if total > MAX_TAR_BYTES:
                raise LabError(f"{tar_path} unpacks to more than {MAX_TAR_BYTES >> 30} GiB; a Lab tar this large is refused")
    except TAR_ERRORS as exc:
        raise LabError(f"{tar_path} is truncated or corrupted ({_one_line(exc)}); copy or rebuild the tar") from None
    symlinks = tarsafe.symlink_names(members)
    for m in members:
        _check_tar_member(m, tar_path, symlinks)
    return members


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path)
    except tarfile.ReadError:
        raise LabError(f"{tar_path} is neither a Lab directory nor a readable tar (not a tar, tar.gz, tar.bz2 or tar.xz file)") from None
    except TAR_ERRORS as exc:
        raise LabError(f"{tar_path} is neither a Lab directory nor a readable tar ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _tar_prefix(members: list[tarfile.TarInfo], tar_path: Path) -> str:
    for m in members:
        parts = PurePosixPath(m.name).parts
        if parts and parts[0] == ".":
            parts = parts[1:]
        if "lab" in parts and parts[-1].endswith(MANIFEST_SUFFIX):
            idx = parts.index("lab")
            return "/".join(parts[:idx])
    raise LabError(f"{tar_path} contains no lab/*{MANIFEST_SUFFIX}; it is not a tar of a Lab")


def _check_tar_member(m: tarfile.TarInfo, tar_path: Path, symlinks: set[PurePosixPath]) -> None:
    reason = tarsafe.unsafe_reason(m, symlinks)
    if reason is not None:
        what = "link" if m.issym() or m.islnk() else "member"
        raise LabError(f"{tar_path}: {what} {m.name!r} {reason}; refusing to unpack this Lab")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise LabError(f"{tar_path}: member {m.name!r} is a device or fifo; Labs contain only files, directories and links")
