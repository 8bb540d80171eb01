"""GET /v1/jobs/{job}/log: a job's stdout or stderr, its tail, from an offset, or followed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from ..exec.layout import FAIL, SUCCESS, OutputLayout, open_job_file
from ..store import reads
from .requests import caller, choice_query, db, error, int_query


async def job_log(request: web.Request) -> web.StreamResponse:
    caller(request)
    job = request.match_info["job"]
    rows = await db(request).run(db(request).db.read, "SELECT DISTINCT job_id, base_path FROM jobs WHERE job_id LIKE ? ESCAPE '\\' LIMIT 2",
                                 (reads.prefix_like(job),))
    if len(rows) != 1:
        return error(404 if not rows else 400, f"no job matches {job!r}" if not rows else f"job prefix {job!r} is ambiguous")
    layout = OutputLayout(Path(rows[0]["base_path"]))
    repx = layout.repx_dir(rows[0]["job_id"])
    path = repx / choice_query(request, "stream", {"stdout": "stdout.log", "stderr": "stderr.log"})
    follow = choice_query(request, "follow", {"0": False, "1": True, "false": False, "true": True})
    tail = int_query(request, "tail", 0, 0, MAX_TAIL_LINES)
    offset = int_query(request, "offset", 0, 0, 1 << 62)  # a reader resuming where it stopped
    if tail and offset:
        return error(400, "give either tail= (the last lines) or offset= (from a byte on), not both")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    position = await asyncio.to_thread(_tail_start, path, tail) if tail else offset
    while True:
        # Bounded reads off the event loop: a log may be gigabytes, or something other than a file.
        chunk = await asyncio.to_thread(_read_log_chunk, path, position)
        if chunk:
            position += len(chunk)
            await response.write(chunk)
            continue
        finished = (repx / SUCCESS).exists() or (repx / FAIL).exists()
        if not follow or finished:
            break
        await asyncio.sleep(0.25)
    await response.write_eof()
    return response


LOG_CHUNK = 1 << 20
MAX_TAIL_LINES = 100_000
# A tail scans backwards at most this far: a log of few newlines (or a sparse one) then answers
# with its last 16 MiB instead of occupying a worker thread for the whole file.
MAX_TAIL_BYTES = 16 << 20


def _read_log_chunk(path: Path, position: int) -> bytes:
    try:
        fd = open_job_file(path)
    except (OSError, ValueError):
        return b""
    with os.fdopen(fd, "rb") as fh:
        fh.seek(position)
        return fh.read(LOG_CHUNK)


def _tail_start(path: Path, lines: int) -> int:
    """Where the last `lines` lines of the log begin, reading backwards block by block."""
    try:
        fd = open_job_file(path)
    except (OSError, ValueError):
        return 0
    with os.fdopen(fd, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        position, seen, floor = end, 0, max(0, end - MAX_TAIL_BYTES)
        while position > floor:
            step = min(LOG_CHUNK, position - floor)
            position -= step
            fh.seek(position)
            block = fh.read(step)
            if position + step == end and block.endswith(b"\n"):
                seen -= 1  # the final newline ends the last line; it does not start one
            index = len(block)
            while (index := block.rfind(b"\n", 0, index)) >= 0:
                seen += 1
                if seen == lines:
                    return position + index + 1
        return floor
