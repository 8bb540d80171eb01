"""Looking at a Lab and its outputs: list, show, log, trace-params."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import quote

import click
import httpx

from repxd.api.client import ApiError
from repxd.errors import RepxError, SelectionError
from repxd.exec.inputs import resolve_inputs, resolve_output
from repxd.exec.layout import FAIL, SUCCESS
from repxd.lab.graph import JobStatus, matching_jobs, statuses
from repxd.lab.model import Lab
from repxd.user_config import Resources, load_resources

from .common import Session, default_resources, lab_options, open_view
from .complete import complete_jobs
from .daemon import API_OPTION, connect
from .table import print_table


def one_job(lab: Lab, spec: str) -> str:
    matches = matching_jobs(lab, spec)
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = "\n  ".join(sorted(matches)[:10]) + ("\n  …" if len(matches) > 10 else "")
        raise SelectionError(f"job-id prefix {spec!r} is ambiguous; it matches {len(matches)} jobs:\n  {shown}")
    raise SelectionError(f"no job id starts with {spec!r} (see `repxctl list jobs`)")


def all_statuses(session: Session) -> dict[str, JobStatus]:
    lab = session.lab
    return statuses(lab, lab.jobs, session.layout.outcomes(lab.jobs), session.active)


@click.group()
def show() -> None:
    """Show one job, or where its outputs are."""


@show.command("job")
@click.argument("job", shell_complete=complete_jobs)
@lab_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--resources", "show_resources", is_flag=True,
              help="Only the merged resources, and which default, Lab hint or rule set each.")
@click.option("--resources-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=default_resources, help="A resources.toml merged last, as `run --resources FILE`.")
def show_job(job, as_json, show_resources, resources_file, **kw) -> None:
    """Everything about one job: status, parameters, inputs, outputs, resources and paths."""
    session = open_view(**kw)
    lab, layout = session.lab, session.layout
    job_id = one_job(lab, job)
    j = lab.jobs[job_id]
    if show_resources:
        print_resources(session, job_id, load_resources(resources_file), as_json)
        return
    record = {
        "id": job_id, "run": j.run, "stage": j.name, "stage_type": j.stage_type,
        "status": all_statuses(session)[job_id].value, "params": j.params,
        "dependencies": list(j.deps), "inputs": resolve_inputs(lab, j, layout),
        "outputs": {k: resolve_output(lab, layout, job_id, k) for k in j.outputs},
        "resource_hints": j.resource_hints, "output_dir": str(layout.job_root(job_id)),
        "executables": {name: exe.path for name, exe in j.executables.items()},
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for key, value in record.items():
        if isinstance(value, dict | list):
            click.echo(f"{key}:")
            for item in value.items() if isinstance(value, dict) else enumerate(value):
                click.echo(f"  {item[0] if isinstance(value, dict) else '-'}{':' if isinstance(value, dict) else ''} {item[1]}")
            if not value:
                click.echo("  (none)")
        else:
            click.echo(f"{key}: {value}")


def print_resources(session: Session, job_id: str, resources: Resources, as_json: bool) -> None:
    explained = resources.explain(job_id, session.lab.jobs[job_id].resource_hints, session.target_name)
    if as_json:
        click.echo(json.dumps({"job": job_id, "target": session.target_name, "resources": {
            key: {"value": value, "source": source} for key, (value, source) in explained.items()}}, indent=2))
        return
    click.echo(f"resources of {job_id} on target {session.target_name}:")
    print_table(["key", "value", "source"], [[key, value, source] for key, (value, source) in explained.items()])


@show.command("output")
@click.argument("job", shell_complete=complete_jobs)
@click.argument("key", required=False, metavar="[KEY|PATH]")
@lab_options
@click.option("--cat", is_flag=True, help="Print the output's content instead of its path (without KEY: every output's).")
@click.option("--json", "as_json", is_flag=True)
def show_output(job, key, cat, as_json, **kw) -> None:
    """Paths of a job's outputs (or the path of output KEY; --cat prints its content). A PATH that is
    not an output key is read relative to the job's out/ directory, as upstream: a file is printed,
    a directory listed."""
    session = open_view(**kw)
    lab, layout = session.lab, session.layout
    job_id = one_job(lab, job)
    outputs = {k: resolve_output(lab, layout, job_id, k) for k in lab.jobs[job_id].outputs}
    if key is not None and key not in outputs:
        _show_out_path(session, job_id, key)
        return
    if key is not None:
        path = Path(outputs[key])
        if cat:
            if path.is_dir():
                raise SelectionError(f"{path} is a directory; --cat prints files (list it with `ls`)")
            if not path.is_file():
                raise SelectionError(f"{path} does not exist yet (job status: {all_statuses(session)[job_id].value})")
            _print_file(path)
        else:
            click.echo(json.dumps({key: str(path)}) if as_json else path)
        return
    if cat:
        _cat_outputs(session, job_id, outputs)
    elif as_json:
        click.echo(json.dumps(outputs, indent=2))
    else:
        print_table(["OUTPUT", "PATH", "EXISTS"], [[k, p, "yes" if Path(p).exists() else "no"] for k, p in outputs.items()])


def _cat_outputs(session: Session, job_id: str, outputs: dict[str, str]) -> None:
    """`--cat` without KEY: a single output printed as `cat` would; several each under a
    `==> KEY: PATH <==` header, as `head` marks several files. Checked before printing anything,
    so a missing output is an error rather than a half-printed listing."""
    if not outputs:
        raise SelectionError(f"job {job_id} declares no outputs; see its out/ directory with `repxctl show output {job_id} .`")
    missing = [k for k, p in outputs.items() if not Path(p).exists()]
    if missing:
        raise SelectionError(f"output {', '.join(missing)} of job {job_id} does not exist yet "
                             f"(job status: {all_statuses(session)[job_id].value})")
    for index, (key, path) in enumerate(outputs.items()):
        if len(outputs) > 1:
            if index:
                click.echo()
            click.echo(f"==> {key}: {path} <==")
        if Path(path).is_dir():
            for entry in sorted(Path(path).rglob("*")):
                click.echo(f"{entry.relative_to(path)}{'/' if entry.is_dir() else ''}")
        else:
            _print_file(Path(path))


def _show_out_path(session: Session, job_id: str, relative: str) -> None:
    out = session.layout.job_root(job_id) / "out"
    path = (out / relative).resolve()
    if not path.is_relative_to(out.resolve()):
        raise SelectionError(f"{relative!r} leaves the job's out/ directory; give a path inside it")
    if not path.exists():
        keys = ", ".join(session.lab.jobs[job_id].outputs) or "none"
        files = (", ".join(sorted(str(p.relative_to(out)) for p in out.rglob("*"))[:20]) or "none") if out.is_dir() \
            else f"none yet (status: {all_statuses(session)[job_id].value})"
        raise SelectionError(f"job {job_id} has no output key or out/ file {relative!r}; it has: {keys}; files in out/: {files}")
    if path.is_dir():
        for entry in sorted(path.rglob("*")):
            click.echo(f"{entry.relative_to(path)}{'/' if entry.is_dir() else ''}")
    else:
        _print_file(path)


def _print_file(path: Path) -> None:
    try:
        data = path.read_bytes()  # bytes as they are: outputs need not be UTF-8
    except OSError as exc:
        raise RepxError(f"cannot read {path}: {exc.strerror}") from None
    click.echo(data, nl=False)


@click.command()
@click.argument("job", shell_complete=complete_jobs)
@lab_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job finishes.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr.log instead of stdout.log.")
@click.option("-n", "--lines", type=click.IntRange(min=0), help="Only the last N lines (default: the whole log).")
@API_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the job, stream, log path and content.")
@click.option("--journal", "from_journal", is_flag=True,
              help="The job's entries in this host's journal (REPX_JOB_ID=JOB) instead of its log files: the daemon's "
                   "lines about it, and systemd's about its unit under the systemd launcher.")
def log(job, follow, use_stderr, lines, api_address, as_json, from_journal, **kw) -> None:
    """Print a job's stdout (or --stderr) log. Without a Lab, asks the daemon for it."""
    if as_json and follow:
        raise RepxError("--json prints the log once as one object; leave out --follow, or --json to follow it")
    if from_journal:
        if follow or use_stderr:
            raise RepxError(f"--journal prints the job's journal entries once; {'--follow' if follow else '--stderr'} "
                            "reads its log files: leave out one of the two")
        if click.get_current_context().get_parameter_source("api_address") is click.core.ParameterSource.COMMANDLINE:
            raise RepxError("--journal reads this host's journal, --api asks a daemon for the log files: leave out one of the two")
        # With a Lab, JOB is a prefix of one of its jobs, as for the log files; else of an id the journal knows.
        job_id = one_job(open_view(**kw).lab, job) if kw["lab_path"] is not None else None
        _log_from_journal(job_id or job, job_id is not None, lines, as_json)
        return
    if kw["lab_path"] is None:
        _log_from_daemon(job, follow, use_stderr, lines, api_address, as_json)
        return
    session = open_view(**kw)
    job_id = one_job(session.lab, job)
    repx = session.layout.repx_dir(job_id)
    path = repx / ("stderr.log" if use_stderr else "stdout.log")
    if not path.exists() and not follow:
        raise SelectionError(f"job {job_id} has no log yet ({path} does not exist); has it run?")
    if as_json:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RepxError(f"cannot read {path}: {exc.strerror}") from None
        _echo_log_json(job_id, use_stderr, str(path), data, lines)
        return
    position = 0
    if lines is not None and path.exists():
        position = _print_tail(path, lines)
    while True:
        if path.exists():
            try:
                with open(path, "rb") as fh:
                    if fh.seek(0, 2) < position:
                        position = 0  # truncated: the job started again; print the new log
                    fh.seek(position)
                    chunk = fh.read()
            except OSError as exc:
                raise RepxError(f"cannot read {path}: {exc.strerror}") from None
            position += len(chunk)
            if chunk:
                click.echo(chunk, nl=False)  # bytes: a UTF-8 character split across reads stays whole
        finished = (repx / SUCCESS).exists() or (repx / FAIL).exists()
        if not follow or (finished and (not path.exists() or path.stat().st_size == position)):
            return
        time.sleep(0.25)


def _log_from_journal(job: str, exact: bool, lines: int | None, as_json: bool) -> None:
    from .journal import job_journal

    job_id, entries = job_journal(job, exact)
    shown = "".join(entry.line() + "\n" for entry in entries).splitlines(keepends=True)
    if lines is not None:
        shown = shown[-lines:] if lines else []
    if as_json:
        _echo_log_json(job_id, False, None, "".join(shown).encode(), None, stream="journal")
        return
    click.echo("".join(shown), nl=False)


def _print_tail(path: Path, lines: int) -> int:
    """Print the last `lines` lines of the log; return where following continues from."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RepxError(f"cannot read {path}: {exc.strerror}") from None
    kept = data.splitlines(keepends=True)[-lines:] if lines else []
    click.echo(b"".join(kept), nl=False)
    return len(data)


def _echo_log_json(job_id: str, use_stderr: bool, path: str | None, data: bytes, lines: int | None,
                   stream: str | None = None) -> None:
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b""
    # JSON holds text: bytes that are not UTF-8 become U+FFFD rather than failing the command.
    stream = stream or ("stderr" if use_stderr else "stdout")
    click.echo(json.dumps({"job": job_id, "stream": stream, "path": path,
                           "content": data.decode(errors="replace")}, indent=2))


def _log_from_daemon(job: str, follow: bool, use_stderr: bool, lines: int | None, api_address: str | None,
                     as_json: bool = False) -> None:
    api = connect(api_address)
    params = {"stream": "stderr" if use_stderr else "stdout", "follow": "1" if follow else "0"}
    if lines:
        params["tail"] = str(lines)
    try:
        # Quoted, dots too: a job argument with `/`, `?` or `..` is a (missing) job name, not another route.
        with api.stream(f"/v1/jobs/{quote(job, safe='').replace('.', '%2E')}/log", params) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    message = response.json().get("error", response.text)
                except ValueError:  # not our JSON: a proxy's or an older daemon's page
                    message = response.text.strip() or response.reason_phrase
                raise ApiError(response.status_code, message)
            if as_json:
                # The daemon names no path (the log may live on an agent's host); the tail was applied by the daemon.
                _echo_log_json(job, use_stderr, None, response.read(), None)
                return
            for chunk in response.iter_bytes():
                click.get_binary_stream("stdout").write(chunk)
                click.get_binary_stream("stdout").flush()
    except httpx.TransportError as exc:
        raise RepxError(f"no Lab given (pass --lab PATH or set REPX_LAB) and no daemon to ask at {api.address} ({exc})") from None


def effective_params(lab: Lab) -> dict[str, dict[str, tuple[object, str]]]:
    """Each job's parameters with those inherited from its dependencies, and which job each comes
    from; a job's own parameters win over inherited ones."""
    memo: dict[str, dict[str, tuple[object, str]]] = {}

    def effective(job_id: str) -> dict[str, tuple[object, str]]:
        if job_id not in memo:
            merged: dict[str, tuple[object, str]] = {}
            for dep in lab.jobs[job_id].deps:
                merged.update(effective(dep))
            merged.update({k: (v, job_id) for k, v in lab.jobs[job_id].params.items()})
            memo[job_id] = merged
        return memo[job_id]

    return {job_id: effective(job_id) for job_id in lab.jobs}


@click.command("trace-params")
@click.argument("job", required=False, shell_complete=complete_jobs)
@lab_options
@click.option("--json", "as_json", is_flag=True)
def trace_params(job, as_json, **kw) -> None:
    """Effective parameters of a job (without JOB: of every job, as upstream) and which job each
    comes from (own parameters win)."""
    lab = open_view(**kw).lab
    job_ids = [one_job(lab, job)] if job is not None else sorted(lab.jobs)
    effective = effective_params(lab)
    if as_json:
        traced = {j: {k: {"value": v, "from": src} for k, (v, src) in sorted(effective[j].items())} for j in job_ids}
        click.echo(json.dumps(traced[job_ids[0]] if job is not None else traced, indent=2))
        return
    for index, job_id in enumerate(job_ids):
        if index:
            click.echo()
        click.echo(job_id)
        print_table(["PARAM", "VALUE", "FROM"], [[k, json.dumps(v), "(own)" if src == job_id else src]
                                                for k, (v, src) in sorted(effective[job_id].items())])
