"""The output layout under a target's base path (lab-format §6) and its completion evidence."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..lab.graph import Outcome
from .completions import read_outcomes

SUCCESS = "SUCCESS"
FAIL = "FAIL"
COMPLETIONS = "completions.jsonl"


class OutputLayout:
    """Paths of one base path: `artifacts/`, `outputs/<jobId>/{out,repx}`, `cache/`."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.artifacts = self.base / "artifacts"
        self.outputs = self.base / "outputs"
        self.cache = self.base / "cache"
        self.completions = self.outputs / COMPLETIONS

    def job_root(self, job_id: str) -> Path:
        return self.outputs / job_id

    def out_dir(self, job_id: str) -> Path:
        return self.outputs / job_id / "out"

    def repx_dir(self, job_id: str) -> Path:
        return self.outputs / job_id / "repx"

    def guard(self, repx_dir: Path) -> Path:
        """The stem of the launcher's lock and exit-status files for the process logging to
        `repx_dir`: one flat directory, so a job costs no directory creation."""
        return self.cache / "guards" / self.relative_to_outputs(repx_dir).replace("/", "%")

    def relative_to_outputs(self, path: Path) -> str:
        """`path` relative to `outputs/` (ValueError when not under it), as plain text: a job's
        launch asks twice, and pathlib's relative_to costs ~10 µs a call."""
        text, outputs = str(path), str(self.outputs)
        if not text.startswith(outputs + "/"):
            raise ValueError(f"{path} is not under {outputs}")
        return text[len(outputs) + 1:]

    def success_evidence(self, job_id: str, repx_dir: Path) -> dict:
        """What `finish` writes for a success, for the spawner to write instead (spawner.record_success)."""
        return {"marker": f"{repx_dir}/{SUCCESS}", "completions": str(self.completions),
                "line": completion_line(job_id, Outcome.OK) + "\n"}

    # ---- evidence ------------------------------------------------------------------------

    def read_completions(self) -> Mapping[str, Outcome] | None:
        """The last outcome per job from completions.jsonl (read-only); None when the file is absent.
        Corrupt lines (a crash mid-append, manual edits) are skipped."""
        return read_outcomes(self.completions)

    def scan_markers(self, job_ids: Iterable[str]) -> dict[str, Outcome]:
        outcomes = {}
        for job_id in job_ids:
            repx = self.repx_dir(job_id)
            if (repx / SUCCESS).exists():
                outcomes[job_id] = Outcome.OK
            elif (repx / FAIL).exists():
                outcomes[job_id] = Outcome.FAIL
        return outcomes

    def outcomes(self, job_ids: Iterable[str]) -> dict[str, Outcome]:
        """Outcomes of `job_ids`. completions.jsonl is read first (one file instead of a stat per job);
        a success it records counts only while the job's SUCCESS marker still exists, so a deleted
        output directory makes the job run again."""
        job_ids = list(job_ids)
        logged = self.read_completions()
        if logged is None:
            return self.scan_markers(job_ids)
        outcomes = {}
        for job_id in job_ids:
            outcome = logged.get(job_id)
            if outcome is Outcome.OK and not (self.repx_dir(job_id) / SUCCESS).exists():
                continue
            if outcome is None:
                # A marker written by a tool that does not log completions still counts.
                repx = self.repx_dir(job_id)
                if (repx / SUCCESS).exists():
                    outcome = Outcome.OK
                elif (repx / FAIL).exists():
                    outcome = Outcome.FAIL
            if outcome is Outcome.FAIL and not self.job_root(job_id).exists():
                continue
            if outcome is not None:
                outcomes[job_id] = outcome
        return outcomes

    # ---- writing -------------------------------------------------------------------------

    def append_completion(self, job_id: str, outcome: Outcome) -> None:
        """One line per completion, written with a single O_APPEND write so concurrent writers
        never interleave within a line."""
        line = completion_line(job_id, outcome) + "\n"
        try:
            fd = os.open(self.completions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            self.outputs.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.completions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def completion_line(job_id: str, outcome: Outcome) -> str:
    return json.dumps({"id": job_id, "s": outcome.value}, separators=(",", ":"))


def clear_markers(repx_dir: Path) -> None:
    for name in (SUCCESS, FAIL):
        (repx_dir / name).unlink(missing_ok=True)


def prepare_dirs(out: Path, repx: Path, *, fresh_out: bool) -> None:
    if out.parent == repx.parent:
        try:  # a first attempt, the common case: three directory creations and nothing to clear
            os.mkdir(out.parent)
        except OSError:
            pass
        else:
            os.mkdir(out)
            os.mkdir(repx)
            return
    if fresh_out and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    repx.mkdir(parents=True, exist_ok=True)
    clear_markers(repx)


@dataclass
class Preparation:
    """A process's directories made ready before it starts: `out/` (emptied unless handed to
    another user, `fresh_out` False) and `repx/` without markers, then `files` (names in `repx/`
    and their JSON values) written. Every launcher's `run` is given one and calls it when it
    needs the directories; the subprocess launcher has its spawner do a first attempt's instead
    (`first_attempt`), off this process's event loop."""

    out: Path
    repx: Path
    fresh_out: bool
    files: dict[str, object] = field(default_factory=dict)

    def __call__(self) -> None:
        prepare_dirs(self.out, self.repx, fresh_out=self.fresh_out)
        for name, value in self.files.items():
            write_json(self.repx / name, value)

    def first_attempt(self) -> dict | None:
        """The spawner's `prepare` request (see spawner.prepare_first_attempt); None where only
        the launcher prepares: an `out/` kept for another user, or not a job's own directory."""
        if not self.fresh_out or self.out.parent != self.repx.parent:
            return None
        out, repx = str(self.out), str(self.repx)
        return {"dirs": [os.path.dirname(out), out, repx], "json": [[f"{repx}/{name}", value] for name, value in self.files.items()]}


def write_marker(repx_dir: Path, name: str) -> None:
    """Create a marker. It is empty, so its creation is atomic: it exists or it does not."""
    os.close(os.open(repx_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))


def write_json(path: Path, value) -> None:
    """For files rewritten before every attempt (inputs.json, parameters.json): a crash leaves
    the attempt unstarted, and the next one writes them again. One write on a bare descriptor:
    a text file object costs four more system calls (fstat, ioctl, two lseeks)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        data = memoryview(json.dumps(value, indent=2).encode())
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def write_json_atomic(path: Path, value) -> None:
    # The temporary name is per process: two runs may register the same file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


class UnreadableJobFile(ValueError):
    """A file a job produced that repx will not read: not a regular file, or too large."""


def open_job_file(path: Path) -> int:
    """Open a file a job could have replaced: never blocks on a FIFO, never follows a symlink,
    and only a regular file is accepted. Returns the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableJobFile(f"{path.name} is a symbolic link, not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableJobFile(f"{path.name} is not a regular file (a FIFO, device or directory)")
    return fd


def read_job_file(path: Path, limit: int) -> bytes:
    """The whole of a job-produced file of at most `limit` bytes (blocking: call it off the event loop)."""
    fd = open_job_file(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnreadableJobFile(f"{path.name} is larger than {limit} bytes")
    return data
