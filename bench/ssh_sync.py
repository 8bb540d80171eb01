"""SSH target sync figures: re-sync of an unchanged Lab tree (default ~100 MB) to a real second
host (tests/ssh_host.py: sshd in a network namespace; needs root), repx's staged push next to a
plain `rsync -a` of the same tree over the same ssh, in one invocation.

    sudo python bench/ssh_sync.py [--mb 100] [--files 400]

Prints, for the first sync and the unchanged re-sync: bytes sent (rsync's stats; goal for the
re-sync < 1% of the Lab) and wall time, repx's and the baseline's side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from ssh_host import start_ssh_host  # noqa: E402

from repxd.targets.ssh.connection import SshConnection  # noqa: E402
from repxd.targets.ssh.sync import RemoteBase  # noqa: E402
from repxd.user_config import SshSettings  # noqa: E402


def lab_tree(root: Path, megabytes: int, files: int) -> int:
    """Job directories with random (incompressible) payloads and executable scripts: `megabytes` in
    all, like a Lab's artifacts/ (jobs/<hash>/bin, a manifest)."""
    size = megabytes * 1024 * 1024 // files
    for i in range(files):
        job = root / "jobs" / f"{i:04d}-job" / "bin"
        job.mkdir(parents=True)
        (job / "run.sh").write_bytes(b"#!/bin/sh\n" + os.urandom(size))
        (job / "run.sh").chmod(0o755)
    (root / "lab").mkdir()
    (root / "lab" / "manifest.json").write_text('{"bench": true}\n')
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def plain_rsync(tree: Path, connection: SshConnection, dest: str) -> tuple[int, float]:
    started = time.monotonic()
    done = subprocess.run(["rsync", "-a", "--stats", "-e", shlex.join(connection.ssh_options()), f"{tree}/",
                           f"{connection.rsync_host}:{dest}/"], capture_output=True, text=True, check=True)
    seconds = time.monotonic() - started
    return int(re.search(r"Total bytes sent: ([\d,]+)", done.stdout).group(1).replace(",", "")), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ssh_sync.py needs root (the test host is a network namespace with its own user)")
    if shutil.which("rsync") is None:
        sys.exit("rsync is not installed (apt install rsync)")
    workdir = Path(tempfile.mkdtemp(prefix="repx-ssh-bench-", dir="/var/tmp"))
    host = start_ssh_host(workdir)  # made 0755 there: sshd reads the keys as the test user
    try:
        tree = workdir / "lab" / "artifacts"
        total = lab_tree(tree, args.mb, args.files)
        connection = SshConnection("bench", "repx-remote", SshSettings(config_file=host.ssh_config))
        remote = RemoteBase(connection, f"/home/{host.user}/base")
        rows = []
        for label in ("first sync", "unchanged re-sync"):
            started = time.monotonic()
            stats = asyncio.run(remote.push_artifacts(tree))
            repx_seconds = time.monotonic() - started
            plain_bytes, plain_seconds = plain_rsync(tree, connection, f"/home/{host.user}/plain")
            rows.append((label, stats.bytes_sent, repx_seconds, plain_bytes, plain_seconds))
        print(f"Lab tree: {total / 1e6:.1f} MB in {args.files + 1} files; remote {host.address} (network namespace)")
        print(f"{'':20} {'repx bytes':>12} {'% of Lab':>9} {'repx s':>8} {'rsync -a bytes':>15} {'rsync -a s':>11}")
        for label, sent, seconds, plain_sent, plain_seconds in rows:
            print(f"{label:20} {sent:>12,} {100 * sent / total:>8.3f}% {seconds:>8.2f} {plain_sent:>15,} {plain_seconds:>11.2f}")
        resync = rows[1][1] / total
        print(f"re-sync goal (< 1% of the Lab): {'met' if resync < 0.01 else 'NOT met'} ({100 * resync:.3f}%)")
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
