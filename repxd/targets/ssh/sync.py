"""Synchronisation phases 1–2 with an SSH target: bootstrap (check the remote, deploy repx's helper
files) and the Lab transfer (the local `artifacts/` pushed with the system rsync over the system
ssh, staged, then swapped in), plus fetching job outputs back.

Remote layout under the target's base path (upstream's): `artifacts/` (a symlink to the complete
copy in `.artifacts/<stage>`), `outputs/<jobId>/`, `bin/` (content-addressed helpers)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...user_config import state_home
from ..commands import CommandMissing
from .connection import SshConnection, SshError, SshToolMissing, remote_path

DEFAULT_MIN_FREE = 64 * 1024 * 1024
_STATS = {"bytes_sent": r"Total bytes sent: ([\d,]+)", "bytes_received": r"Total bytes received: ([\d,]+)",
          "total_size": r"Total file size: ([\d,]+)",
          "files_transferred": r"Number of regular files transferred: ([\d,]+)"}
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+/s)\s+(\S+)")


class SyncError(SshError):
    """A phase failed for a reason on the remote (disk full, not writable, rsync error)."""


@dataclass(frozen=True)
class RemoteInfo:
    uname: str
    free_bytes: int


@dataclass(frozen=True)
class TransferStats:
    bytes_sent: int
    bytes_received: int
    total_size: int
    files_transferred: int
    seconds: float


def local_base_for(target_name: str) -> Path:
    """Where this machine keeps its side of an SSH target: the artifacts it pushes, outputs pulled."""
    return state_home() / "targets" / target_name


class RemoteBase:
    """The target's base path on the remote, reached through its `SshConnection`."""

    def __init__(self, connection: SshConnection, base_path: Path | str) -> None:
        self.connection = connection
        self.base = remote_path(base_path).rstrip("/") or "/"
        self._deployed: set[str] = set()
        self.image_stats: TransferStats | None = None  # the last push's phase 3

    @property
    def name(self) -> str:
        return self.connection.target_name

    def _q(self, relative: str = "") -> str:
        return shlex.quote(f"{self.base}/{relative}" if relative else self.base)

    # -- phase 1: bootstrap -------------------------------------------------------------------

    async def bootstrap(self, min_free_bytes: int = DEFAULT_MIN_FREE) -> RemoteInfo:
        """One remote command: the system, a writable base path, its free space, rsync present."""
        marker = f".repx-write-test.{secrets.token_hex(4)}"
        script = (f"uname -sm; mkdir -p {self._q()} || exit 10; "
                  f"( : > {self._q(marker)} ) 2>/dev/null || exit 11; rm -f {self._q(marker)}; "
                  f"df -Pk {self._q()} | tail -n 1; command -v rsync >/dev/null || exit 12")
        done = await self.connection.run_script(script, timeout=60)
        where = f"target {self.name!r}: base path {self.base}"
        if done.returncode == 10:
            raise SyncError(f"{where} cannot be created ({_last(done.stderr)}); choose a base_path the ssh user may write")
        if done.returncode == 11:
            raise SyncError(f"{where} is not writable by the ssh user; fix its permissions or choose another base_path")
        if done.returncode == 12:
            raise SshToolMissing(f"target {self.name!r}: rsync is not installed on {self.connection.host}; "
                                 "install it there (repx transfers Labs with rsync)")
        lines = done.stdout.splitlines()
        if not done.ok or len(lines) < 2:
            raise SyncError(f"target {self.name!r}: checking the remote failed: {done.failure()}")
        free = int(lines[-1].split()[3]) * 1024
        if free < min_free_bytes:
            raise SyncError(f"{where}: remote disk full ({_size(free)} free, {_size(min_free_bytes)} needed); "
                            "free space there or choose another base_path")
        return RemoteInfo(uname=lines[0].strip(), free_bytes=free)

    async def deploy_helper(self, name: str, content: bytes) -> str:
        """Put one of repx's remote helpers under `bin/`, named by its content, once: the path returned
        always holds exactly `content`, so helpers of different repx versions live side by side."""
        digest = hashlib.sha256(content).hexdigest()[:16]
        path = f"{self.base}/bin/{digest}-{name}"
        if path in self._deployed:
            return path
        present = await self.connection.run(["test", "-x", path])
        if not present.ok:
            await self.connection.put(path, content, mode=0o755)
        self._deployed.add(path)
        return path

    # -- phase 2: Lab transfer ----------------------------------------------------------------

    async def push_artifacts(self, local_artifacts: Path, progress: Callable[[str], None] | None = None,
                             images: Path | None = None) -> TransferStats:
        """Send the local `artifacts/` tree incrementally. It lands in a new stage (a hard-linked copy
        of the current one, so unchanged files cost nothing), and only a complete stage replaces
        `artifacts` (one atomic rename of the symlink). A failed transfer leaves `artifacts` as it was
        and removes its stage. `images` (see images.images_tree) replaces the Lab's `images/`: its
        content-addressed layers go with a second rsync into the same stage (phase 3), its
        statistics kept in `image_stats`."""
        if not local_artifacts.is_dir():
            raise SyncError(f"target {self.name!r}: nothing to send: {local_artifacts} is not a directory")
        stage = f".artifacts/{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        prepare = (f"set -e; mkdir -p {self._q()}; cd {self._q()}; mkdir -p .artifacts; "
                   f"if [ -d artifacts/ ]; then cp -al artifacts/. {shlex.quote(stage)}; "
                   f"else mkdir {shlex.quote(stage)}; fi")
        prepared = await self.connection.run_script(prepare, timeout=600)
        if not prepared.ok:
            await self._drop_stage(stage)
            raise SyncError(f"target {self.name!r}: preparing the transfer in {self.base} failed: "
                            f"{_disk_hint(prepared.stderr)}")
        try:
            destination = f"{self.connection.rsync_host}:{self.base}/{stage}/"
            stats = await self._rsync([*(["--exclude=/images/"] if images else []), f"{local_artifacts}/", destination],
                                      progress)
            if images:  # content-addressed names: a file the remote has holds the same bytes
                self.image_stats = await self._rsync(["--ignore-existing", f"{images}/", destination], progress)
        except SyncError as exc:
            # rsync does not always pass on the receiver's "No space left on device": ask the disk,
            # before the stage is dropped and frees it.
            full = "disk full" not in str(exc) and await self._disk_is_full()
            await self._drop_stage(stage)
            if full:
                raise SyncError(f"target {self.name!r}: rsync failed: {_disk_hint('No space left on device')}") from exc
            raise
        except BaseException:
            await self._drop_stage(stage)
            raise
        # Swap: a new symlink renamed over `artifacts`; a real directory left by an older layout
        # is moved into .artifacts first. Then older stages go (running jobs hold their open files).
        swap = (f"set -e; cd {self._q()}; ln -sfn {shlex.quote(stage)} artifacts.new; "
                f"if [ -d artifacts ] && [ ! -L artifacts ]; then mv artifacts .artifacts/old-dir-$$; fi; "
                f"mv -T artifacts.new artifacts; "
                f"for old in .artifacts/*; do [ \"$old\" = {shlex.quote(stage)} ] || rm -rf \"$old\"; done")
        swapped = await self.connection.run_script(swap, timeout=600)
        if not swapped.ok:
            raise SyncError(f"target {self.name!r}: putting the transferred Lab in place failed: {swapped.failure()}")
        return stats

    async def _disk_is_full(self) -> bool:
        with contextlib.suppress(SshError):
            done = await self.connection.run_script(f"df -Pk {self._q()} | tail -n 1", timeout=60)
            fields = done.stdout.split()
            if done.ok and len(fields) >= 5:
                return int(fields[3]) < 1024 or fields[4] in ("99%", "100%")
        return False

    async def _drop_stage(self, stage: str) -> None:
        # Unreachable now: the next successful push removes every stage but its own.
        with contextlib.suppress(SshError):
            await self.connection.run_script(f"cd {self._q()} && rm -rf {shlex.quote(stage)}", timeout=600)

    # -- outputs back -------------------------------------------------------------------------

    async def pull_outputs(self, job_ids: list[str], local_outputs: Path,
                           progress: Callable[[str], None] | None = None) -> TransferStats:
        """`outputs/<job>/` of each job into `local_outputs/<job>/`, incrementally; jobs the remote has
        no outputs for are skipped."""
        local_outputs.mkdir(parents=True, exist_ok=True)
        listing = "".join(f"{job}/\n" for job in job_ids)
        return await self._rsync(["-r", "--files-from=-", "--ignore-missing-args",
                                  f"{self.connection.rsync_host}:{self.base}/outputs/", f"{local_outputs}/"],
                                 progress, stdin=listing.encode())

    # -- rsync --------------------------------------------------------------------------------

    async def _rsync(self, args: list[str], progress: Callable[[str], None] | None,
                     stdin: bytes | None = None) -> TransferStats:
        if shutil.which("rsync") is None:
            raise CommandMissing("rsync is not installed on this host (apt install rsync)")
        if progress is None and sys.stderr.isatty():
            progress = _print_progress
        argv = ["rsync", "-a", "--stats", "-e", shlex.join(self.connection.ssh_options())]
        if progress is not None:
            argv += ["--info=progress2", "--no-inc-recursive"]
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        if stdin is not None:
            process.stdin.write(stdin)
            process.stdin.close()
        out, err = await asyncio.gather(_read_stdout(process.stdout, progress), process.stderr.read())
        await process.wait()
        if progress is _print_progress:
            print(file=sys.stderr)
        stderr = err.decode(errors="replace")
        if process.returncode == 255 or ("connection unexpectedly closed" in stderr and "No space" not in stderr):
            raise self.connection.unreachable(_last(stderr))
        if process.returncode != 0:
            raise SyncError(f"target {self.name!r}: rsync failed (exit {process.returncode}): {_disk_hint(stderr)}")
        found = {key: re.search(pattern, out) for key, pattern in _STATS.items()}
        numbers = {key: int(m.group(1).replace(",", "")) if m else 0 for key, m in found.items()}
        return TransferStats(seconds=time.monotonic() - started, **numbers)


async def _read_stdout(stream: asyncio.StreamReader, progress: Callable[[str], None] | None) -> str:
    """rsync's stdout; `--info=progress2` updates end in `\\r`, each handed to `progress`."""
    text, pending = [], b""
    while chunk := await stream.read(4096):
        pending += chunk
        *pieces, pending = re.split(rb"[\r\n]", pending)
        for piece in pieces:
            line = piece.decode(errors="replace")
            match = _PROGRESS.match(line)
            if match and progress is not None:
                progress(f"{match.group(2)}% {match.group(1)} bytes {match.group(3)} {match.group(4)}")
            elif line:
                text.append(line)
    text.append(pending.decode(errors="replace"))
    return "\n".join(text)


def _print_progress(line: str) -> None:
    print(f"\rsync: {line}\033[K", end="", file=sys.stderr, flush=True)


def _disk_hint(stderr: str) -> str:
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return "remote disk full (No space left on device); free space there or choose another base_path"
    return _last(stderr) or "no message"


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
