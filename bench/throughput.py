"""Throughput: `repxctl run` against the fork+exec limit and Snakemake on the same no-op DAG (bench/dag.py).

The limit is what `xargs -P <jobs>` reaches starting one bash per job that writes that job's
output file: the same process starts and the same file writes, without a DAG to respect. Every
figure is printed as a ratio against it, measured in the same invocation (runs interleaved),
because a shared machine drifts between invocations.

Beside it, the layout floor (bench/layout_floor.py): the same jobs started as cheaply as Python
can, each with only the files and directories upstream's output layout asks for. What repx costs
above the floor is its own; what the floor costs above the limit is the layout's, on this
machine's filesystem.

Each measurement is the wall time of one end-to-end command (interpreter startup, loading,
planning, running every job) in a fresh output directory, with the same -j for both tools.
Snakemake is installed into .bench/venv (never into this environment) when missing.

    python bench/throughput.py                  # N = 1000 and 10000, -j 2
    python bench/throughput.py --quick          # N = 200, a smoke run
    python bench/throughput.py --sizes 1000 --repeat 3 -j 2
    python bench/throughput.py --tools limit repx --baseline /tmp/repx-main   # against another tree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from dag import RUN_NAME, default_width, write_lab, write_snakefile

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
VENV = BENCH / "venv"
# What a user tuning Snakemake for many small local jobs would pass: no output, no lock, the
# fast scheduler, and no cap on job starts (the default caps them at 100 per second).
SNAKEMAKE_FLAGS = ["--quiet", "all", "--nolock", "--scheduler", "greedy",
                   "--max-jobs-per-timespan", "1000000/1s"]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()[0]}


def ensure_snakemake() -> Path:
    exe = VENV / "bin" / "snakemake"
    if not exe.exists():
        if "/.bench/" not in (ROOT / ".gitignore").read_text().split():
            print("warning: /.bench/ is not in .gitignore", file=sys.stderr)
        print(f"installing snakemake into {VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "snakemake"], check=True)
    return exe


def repxctl() -> list[str]:
    # The entry point next to this interpreter: no pyenv/asdf shim in front of it.
    script = Path(sys.executable).parent / "repxctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "repxctl.main"]


# CPU seconds (user + system) of the last finished `timed` command and everything it waited for.
last_cpu = [0.0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path, timeout: float, env: dict,
          stdin: str | None = None) -> tuple[float | None, str]:
    """Wall seconds of `argv` (None on timeout) and its stdout; the process group dies on timeout."""
    cpu_before = children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    seconds = time.perf_counter() - start
    last_cpu[0] = children_cpu() - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{err[-2000:]}")
    return seconds, out


def prepare(n: int) -> Path:
    """The Lab and Snakefile for N jobs under .bench/throughput/n<N>, rewritten only when missing."""
    work = BENCH / "throughput" / f"n{n}"
    stamp = work / "dag.json"
    key = {"n": n, "width": default_width(n), "version": 1}
    if not (stamp.exists() and json.loads(stamp.read_text()) == key):
        shutil.rmtree(work, ignore_errors=True)
        write_lab(work / "lab", n)
        write_snakefile(work / "Snakefile", n)
        stamp.write_text(json.dumps(key))
    return work


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_repx(work: Path, n: int, jobs: int, timeout: float, env: dict) -> float | None:
    base = fresh(work / "repx-base")
    argv = [*repxctl(), "run", RUN_NAME, "--lab", str(work / "lab"), "--base-path", str(base),
            "--embedded", "-j", str(jobs), "--json"]
    seconds, out = timed(argv, work, timeout, env)
    if seconds is not None and not ((summary := json.loads(out))["ok"] and summary["executed"] == n):
        raise RuntimeError(f"repx ran {summary['executed']} of {n} jobs (ok={summary['ok']})")
    return seconds


def run_baseline(source: Path, work: Path, n: int, jobs: int, timeout: float, env: dict) -> float | None:
    """repx from another source tree (say, `git archive main` unpacked): the same command with
    that tree first on PYTHONPATH, to compare a change against it in the same invocation."""
    return run_repx(work, n, jobs, timeout, {**env, "PYTHONPATH": str(source)})


def run_limit(work: Path, n: int, jobs: int, timeout: float, env: dict) -> float | None:
    """The fork+exec limit: `xargs -P jobs` starting one bash per job, each writing its output file."""
    cwd = fresh(work / "limit-wd")
    paths = "".join(f"{i}.txt\0" for i in range(n))
    argv = ["xargs", "-0", "-P", str(jobs), "-n", "1", "bash", "-c", ': > "$1"', "job"]
    seconds, _ = timed(argv, cwd, timeout, env, stdin=paths)
    if seconds is not None and (made := len(os.listdir(cwd))) != n:
        raise RuntimeError(f"xargs made {made} of {n} outputs")
    return seconds


def run_floor(work: Path, n: int, jobs: int, timeout: float, env: dict) -> float | None:
    """The layout floor: N jobs of the Lab's script, each with upstream's output files only."""
    base = fresh(work / "floor-base")
    # The Lab's jobs all run the same script: it is the floor's job too.
    script = next((work / "lab").glob("jobs/*/bin/node"), None)
    if script is None:
        raise RuntimeError(f"no job script under {work / 'lab'}")
    argv = [sys.executable, "-S", str(Path(__file__).with_name("layout_floor.py")), str(n), str(jobs),
            str(script), str(base)]
    seconds, _ = timed(argv, base, timeout, env)
    if seconds is not None and (made := len(list((base / "outputs").glob("*/repx/SUCCESS")))) != n:
        raise RuntimeError(f"the layout floor finished {made} of {n} jobs")
    return seconds


def run_snakemake(work: Path, n: int, jobs: int, timeout: float, env: dict, exe: Path) -> float | None:
    cwd = fresh(work / "snakemake-wd")
    argv = [str(exe), "-s", str(work / "Snakefile"), "--cores", str(jobs), *SNAKEMAKE_FLAGS]
    seconds, _ = timed(argv, cwd, timeout, env)
    if seconds is not None and (made := len(os.listdir(cwd / "out"))) != n:
        raise RuntimeError(f"snakemake made {made} of {n} outputs")
    return seconds


def measure(runners: dict, repeat: int, n: int, timeout: float) -> dict:
    """Run the tools in turn, `repeat` rounds (interleaved, so drifting machine load hits both)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpus: dict[str, list[float]] = {name: [] for name in runners}
    loads: dict[str, list[float]] = {name: [] for name in runners}
    failed: set[str] = set()
    for i in range(repeat):
        for name, runner in runners.items():
            if name in failed:
                continue
            loads[name].append(os.getloadavg()[0])
            seconds = runner()
            label = ("did not finish" if seconds is None
                     else f"{seconds:.2f} s, {n / seconds:.0f} jobs/s, {last_cpu[0] / n * 1000:.2f} ms CPU/job")
            print(f"  {name:<9} N={n:<6} run {i + 1}/{repeat}: {label}", flush=True)
            if seconds is None:
                failed.add(name)
            else:
                times[name].append(seconds)
                cpus[name].append(last_cpu[0])
    out = {}
    for name in runners:
        m = {"finished": name not in failed, "runs": times[name], "loadavg": loads[name]}
        if name in failed:
            m["timeout"] = timeout
        else:
            m["seconds"] = statistics.median(times[name])
            m["jobs_per_s"] = n / m["seconds"]
            m["cpu_ms_per_job"] = statistics.median(cpus[name]) / n * 1000
        out[name] = m
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=200, one run each")
    parser.add_argument("-j", "--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and size (median)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is abandoned")
    parser.add_argument("--tools", nargs="+", choices=["limit", "floor", "repx", "snakemake"],
                        default=["limit", "floor", "repx", "snakemake"])
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also run repx from this source tree (as 'repx@base'), interleaved")
    args = parser.parse_args()
    sizes, repeat = ([200], 1) if args.quick else (args.sizes, args.repeat)

    exe = ensure_snakemake() if "snakemake" in args.tools else None
    xdg = BENCH / "xdg"  # keep the user's repx/snakemake config and state out of the runs
    env = {**os.environ, **{f"XDG_{k}_HOME": str(xdg / k.lower()) for k in ("CONFIG", "STATE", "CACHE")}}
    info = machine()
    if exe:
        info["snakemake"] = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), load {info['loadavg_at_start']:.2f}; -j {args.jobs}")

    results = []
    for n in sizes:
        print(f"N={n}: preparing the Lab and Snakefile ...", flush=True)
        work = prepare(n)
        runners = {}
        if "limit" in args.tools:
            runners["limit"] = partial(run_limit, work, n, args.jobs, args.timeout, env)
        if "floor" in args.tools:
            runners["floor"] = partial(run_floor, work, n, args.jobs, args.timeout, env)
        if "repx" in args.tools:
            runners["repx"] = partial(run_repx, work, n, args.jobs, args.timeout, env)
        if args.baseline:
            runners["repx@base"] = partial(run_baseline, args.baseline.resolve(), work, n, args.jobs, args.timeout, env)
        if exe:
            runners["snakemake"] = partial(run_snakemake, work, n, args.jobs, args.timeout, env, exe)
        row: dict = {"n": n, "jobs": args.jobs, **measure(runners, repeat, n, args.timeout)}
        r, s = row.get("repx", {}), row.get("snakemake", {})
        if r.get("finished") and s.get("finished"):
            row["ratio"] = r["jobs_per_s"] / s["jobs_per_s"]
        if row.get("limit", {}).get("finished"):
            for tool in ("floor", "repx", "repx@base", "snakemake"):
                if row.get(tool, {}).get("finished"):
                    row[tool]["of_limit"] = row[tool]["jobs_per_s"] / row["limit"]["jobs_per_s"]
        if row.get("floor", {}).get("finished"):
            for tool in ("repx", "repx@base"):
                if row.get(tool, {}).get("finished"):
                    row[tool]["of_floor"] = row[tool]["jobs_per_s"] / row["floor"]["jobs_per_s"]
        results.append(row)

    print_table(results)
    out = BENCH / "results.json"
    # Merge with earlier results for other sizes (`--sizes 1000`, then `--sizes 10000`).
    earlier = json.loads(out.read_text()).get("results", []) if out.exists() else []
    merged = sorted([r for r in earlier if r["n"] not in sizes] + results, key=lambda r: r["n"])
    out.write_text(json.dumps({"machine": info, "snakemake_flags": SNAKEMAKE_FLAGS, "results": merged}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


def print_table(results: list[dict]) -> None:
    """One line per tool and size: median wall time, jobs/s, CPU per job, share of the limit."""
    print(f"\n{'N':>7} {'tool':<10} | {'s':>8} {'jobs/s':>8} {'CPU ms/job':>10} | {'of limit':>8} {'of floor':>8} | vs snakemake")
    for row in results:
        for tool in ("limit", "floor", "repx", "repx@base", "snakemake"):
            m = row.get(tool)
            if m is None:
                continue
            if not m["finished"]:
                print(f"{row['n']:>7} {tool:<10} | did not finish in {m['timeout']:.0f} s")
                continue
            share = f"{m['of_limit']:.0%}" if "of_limit" in m else ("100%" if tool == "limit" else "-")
            of_floor = f"{m['of_floor']:.0%}" if "of_floor" in m else ("100%" if tool == "floor" else "-")
            versus = f"{row['ratio']:.2f}x" if tool == "repx" and "ratio" in row else ""
            print(f"{row['n']:>7} {tool:<10} | {m['seconds']:>8.2f} {m['jobs_per_s']:>8.0f} "
                  f"{m['cpu_ms_per_job']:>10.2f} | {share:>8} {of_floor:>8} | {versus}")

if __name__ == "__main__":
    main()
