"""The floor of any runner that writes upstream's output layout (lab-format §6): per job, what
that layout asks for and nothing else, as cheaply as Python can do it.

    python -S bench/layout_floor.py N PARALLEL SCRIPT BASE

For each of N jobs: its directory with `out/` and `repx/`, `repx/inputs.json` and
`repx/parameters.json`, the logs `repx/stdout.log` and `repx/stderr.log` as the job's stdout and
stderr, the job (`SCRIPT OUT INPUTS PARAMS`, started with posix_spawn, the cheapest start there
is), then `repx/SUCCESS` and its line in `outputs/completions.jsonl`. At most PARALLEL jobs run at
once; no DAG is respected (as with `xargs -P`, the limit beside it in bench/throughput.py).

What it leaves out of a real runner: reading and planning the Lab, dependencies, the guard that
makes a restart adopt instead of re-run, time limits, and stopping a job's escaped descendants.
So it bounds from below what repx can cost per job on the same machine and filesystem."""

from __future__ import annotations

import os
import sys

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write(path: str, data: bytes) -> None:
    fd = os.open(path, FLAGS, 0o644)
    os.write(fd, data)
    os.close(fd)


def start(i: int, script: str, outputs: str) -> tuple[int, str]:
    job = f"{outputs}/job-{i:08d}"
    out, repx = f"{job}/out", f"{job}/repx"
    os.mkdir(job)
    os.mkdir(out)
    os.mkdir(repx)
    write(f"{repx}/inputs.json", b"{}")
    write(f"{repx}/parameters.json", b'{\n  "i": %d\n}' % i)
    stdout = os.open(f"{repx}/stdout.log", FLAGS, 0o644)
    stderr = os.open(f"{repx}/stderr.log", FLAGS, 0o644)
    pid = os.posix_spawn(script, [script, out, f"{repx}/inputs.json", f"{repx}/parameters.json"], os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)],
                         setsid=True)
    os.close(stdout)
    os.close(stderr)
    return pid, job


def main() -> None:
    n, parallel, script, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    outputs = f"{base}/outputs"
    os.makedirs(outputs, exist_ok=True)
    completions = os.open(f"{outputs}/completions.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    running: dict[int, str] = {}
    failed = 0
    for i in range(n):
        if len(running) >= parallel:
            failed += finish(running, completions)
        pid, job = start(i, script, outputs)
        running[pid] = job
    while running:
        failed += finish(running, completions)
    sys.exit(1 if failed else 0)


def finish(running: dict[int, str], completions: int) -> int:
    pid, status = os.wait()
    job = running.pop(pid)
    ok = os.waitstatus_to_exitcode(status) == 0
    write(f"{job}/repx/{'SUCCESS' if ok else 'FAIL'}", b"")
    os.write(completions, b'{"id":"%s","s":"%s"}\n' % (os.path.basename(job).encode(), b"ok" if ok else b"fail"))
    return 0 if ok else 1


if __name__ == "__main__":
    main()
