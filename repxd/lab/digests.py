"""Checking the SHA-256 of many files at once with coreutils' `sha256sum`, one process per CPU.

A Lab lists tens of thousands of small files; hashing them in Python costs tens of microseconds
of interpreter time each, under the GIL, so threads do not help. `sha256sum` over the same files
is several times faster, and it is on every host repx runs on (coreutils)."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

FILES_PER_PROCESS_CALL = 512


def all_match(paths: list[str], digests: list[str], timeout: float = 3600) -> bool | None:
    """Whether every file in `paths` has the hex SHA-256 at the same place in `digests`; None
    when `sha256sum` is not installed. False tells nothing about which file differs."""
    program, xargs = shutil.which("sha256sum"), shutil.which("xargs")
    if program is None or xargs is None:
        return None
    cpus = len(os.sched_getaffinity(0))
    share = -(-len(paths) // cpus) or 1
    # One pipe per process (records of processes sharing a pipe would interleave mid-line), and
    # within one, sha256sum answers in the order it was given the files: so each group's output
    # is compared as a whole with what it must be.
    groups = [(paths[i:i + share], digests[i:i + share]) for i in range(0, len(paths), share)]
    with ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
        return all(pool.map(lambda group: _group_matches(xargs, program, *group, timeout), groups))


def _group_matches(xargs: str, program: str, paths: list[str], digests: list[str], timeout: float) -> bool:
    # -z: a NUL after each record and file names unescaped, so any name round-trips.
    proc = subprocess.Popen([xargs, "-0", "-n", str(FILES_PER_PROCESS_CALL), program, "-z", "--"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={"LC_ALL": "C"})
    names = [os.fsencode(p) for p in paths]
    expected = b"".join(d.encode() + b"  " + n + b"\0" for d, n in zip(digests, names, strict=True))
    try:
        out, _ = proc.communicate(b"\0".join(names), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return proc.returncode == 0 and out == expected
