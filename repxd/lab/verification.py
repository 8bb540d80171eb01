"""Verifying a Lab's files against the SHA-256 its manifest lists: in batches by coreutils'
`sha256sum` (digests.py), or file by file in threads when anything is in doubt."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import LabError
from .digests import all_match
from .specs import Manifest

SMALL_FILE = 1 << 16  # files up to this size are hashed from one read
VERIFY_CHUNK = 256  # files per task when verifying


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
