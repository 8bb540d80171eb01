"""Jobs as transient systemd units (`repx-job-<jobId>-<attempt>.service` in `repx-jobs.slice`),
started over D-Bus with `StartTransientUnit`.

Each unit gets the job's limits (MemoryMax, CPUQuota, TasksMax, RuntimeMaxSec, DeviceAllow),
appends to the job's `repx/stdout.log` and `stderr.log`, tags its journal lines with
REPX_JOB_ID/REPX_RUN_ID, and records `$EXIT_CODE $EXIT_STATUS $SERVICE_RESULT` in the guard's
exit file from ExecStopPost. The agent holds a reference to the unit (AddRef) so its result can be
read before systemd collects it; if the agent dies, the exit file still carries the result.
A restarted agent finds a still-running unit by name and waits for it instead of starting the
job again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError

from ..errors import ConfigError
from .launcher import (
    HAND_OVER,
    ExitStatus,
    Guard,
    LaunchRequest,
    SubprocessLauncher,
    adoptable_status,
    exit_file,
    guarded,
    status_from_unit,
)
from .layout import Preparation
from .runtimes import Invocation

log = logging.getLogger("repx.launcher")

SYSTEMD = "org.freedesktop.systemd1"
ROOT = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
JOBS_SLICE = "repx-jobs.slice"
STOP_TIMEOUT_SECONDS = 10
POLL_SECONDS = 5.0  # a safety net only: completion normally arrives as a signal
DEFAULT_TASKS_MAX = 4096
_ENDED = ("inactive", "failed")
# Variables systemd gives the agent's own service; a job must not inherit them.
_SERVICE_VARIABLES = {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "INVOCATION_ID", "JOURNAL_STREAM",
                      "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "SYSTEMD_EXEC_PID", "MANAGERPID",
                      "CREDENTIALS_DIRECTORY", "MAINPID"}
_RECORD_EXIT = 'echo "$EXIT_CODE $EXIT_STATUS $SERVICE_RESULT" > "$1"'
# An empty `out/` owned by the job's user: earlier attempts' files may belong to that user.


class UnitStopped(Exception):
    """A job's unit was stopped by someone else than this agent (a shutdown, `systemctl stop`):
    not the job's outcome. The attempt stays the agent's and is started again when handed back."""

    def __init__(self, unit: str) -> None:
        super().__init__(f"{unit} was stopped from outside")
        self.unit = unit


class SystemdLauncher:
    """Starts and watches job units through the system manager."""

    name = "systemd"

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._changed: dict[str, asyncio.Event] = {}
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls) -> SystemdLauncher:
        """Raises OSError or DBusError when there is no system bus or it refuses us."""
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        launcher = cls(bus)
        await launcher._call(ROOT, MANAGER, "Subscribe", "", [])
        await launcher._add_match(f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',"
                                  f"member='PropertiesChanged',path_namespace='{ROOT}/unit'")
        await launcher._add_match(f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='UnitRemoved'")
        return launcher

    async def probe(self) -> None:
        """Start and collect one trivial unit: proves we may manage `repx-job-*` units."""
        request = LaunchRequest(f"repx-job-probe-{os.getpid()}.service", "", "probe")
        await self._start(request, self._properties(Invocation(["/bin/true"], {}, Path("/")), None, request))
        await self._wait(request.unit)

    # ---- the launcher interface (see exec.launcher.SubprocessLauncher) -------------------

    @asynccontextmanager
    async def guarded(self, path: Path, request: LaunchRequest):
        """The directory's lock, after waiting for any unit still running this step (started
        by an earlier agent, under this or an earlier attempt)."""
        async with guarded(path) as guard:
            for unit in await self._live_units(request.pattern):
                log.info("re-attaching to %s", unit, extra={"job_id": request.job_id, "run_id": request.run_id})
                status = await self._wait(unit, take_ref=True)
                guard.leftover_status = adoptable_status(path) if status is None else status
            yield guard

    async def run(self, invocation: Invocation, repx: Path, guard: Guard, request: LaunchRequest,
                  prepare: Preparation, *, success: dict | None = None,
                  on_spawn: Callable[[str], None] | None = None) -> ExitStatus:
        """`success` is not written here (the unit's ExecStopPost records the status only): the
        status is not `recorded`, and `finish` writes the evidence."""
        prepare()  # before the unit starts: its ExecStartPre hands `out/` to the job's user
        for log_name in ("stdout.log", "stderr.log"):
            (repx / log_name).write_bytes(b"")
        try:
            await self._start(request, self._properties(invocation, repx, request, exit_file(guard.path)))
        except DBusError as exc:
            if exc.type != "org.freedesktop.systemd1.UnitExists":
                raise
            log.info("%s already exists; waiting for it", request.unit)
        if on_spawn is not None:
            on_spawn(f"unit:{request.unit}")
        try:
            status = await self._wait(request.unit)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(request.unit))
            raise
        if status is None:
            status = adoptable_status(guard.path)
        if status is None:  # collected before its result could be read, and it left none
            raise UnitStopped(request.unit)
        return status

    # ---- units -----------------------------------------------------------------------------

    def _properties(self, invocation: Invocation, repx: Path | None, request: LaunchRequest,
                    exit_path: Path | None = None) -> list:
        env = [f"{k}={v}" for k, v in invocation.env.items() if k not in _SERVICE_VARIABLES]
        props = [
            ("Description", Variant("s", f"repx job {request.job_id}")),
            ("ExecStart", Variant("a(sasb)", [[invocation.argv[0], invocation.argv, False]])),
            ("WorkingDirectory", Variant("s", str(invocation.cwd))),
            ("Environment", Variant("as", env)),
            ("Slice", Variant("s", JOBS_SLICE)),
            ("CollectMode", Variant("s", "inactive-or-failed")),
            ("AddRef", Variant("b", True)),
            ("TasksMax", Variant("t", DEFAULT_TASKS_MAX)),
            ("CPUQuotaPerSecUSec", Variant("t", max(1, request.cpus) * 1_000_000)),
            ("LogExtraFields", Variant("aay", [f"REPX_JOB_ID={request.job_id}".encode()]
                                       + ([f"REPX_RUN_ID={request.run_id}".encode()] if request.run_id else []))),
        ]
        if repx is not None:
            props += [("StandardOutputFileToAppend", Variant("s", str(repx / "stdout.log"))),
                      ("StandardErrorFileToAppend", Variant("s", str(repx / "stderr.log")))]
        record_exit = ["/bin/sh", ["/bin/sh", "-c", _RECORD_EXIT, "repx-exit", str(exit_path)]]
        if request.user is not None:
            # The job runs as the submitter; these two steps keep root's rights ("+" in a unit
            # file): handing `out/` over, and writing the result next to the agent's guard.
            props.append(("User", Variant("s", str(request.user))))
            props.append(("ExecStartPreEx", Variant("a(sasas)", [["/bin/sh", ["/bin/sh", "-c", HAND_OVER, "repx-out",
                                                                               str(invocation.cwd), str(request.user)],
                                                                  ["privileged"]]])))
            if exit_path is not None:
                props.append(("ExecStopPostEx", Variant("a(sasas)", [[*record_exit, ["privileged"]]])))
        elif exit_path is not None:
            props.append(("ExecStopPost", Variant("a(sasb)", [[*record_exit, False]])))
        if request.mem:
            props.append(("MemoryMax", Variant("t", request.mem)))
        if request.time_seconds:
            props.append(("RuntimeMaxUSec", Variant("t", request.time_seconds * 1_000_000)))
        if request.device_allow:
            props += [("DevicePolicy", Variant("s", "closed")),
                      ("DeviceAllow", Variant("a(ss)", [list(entry) for entry in request.device_allow]))]
        return [list(prop) for prop in props]

    async def _start(self, request: LaunchRequest, properties: list) -> None:
        await self._call(ROOT, MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                         [request.unit, "fail", properties, []])

    async def _live_units(self, pattern: str) -> list[str]:
        if not pattern:
            return []
        units = await self._call(ROOT, MANAGER, "ListUnitsByPatterns", "asas",
                                 [["active", "activating", "deactivating", "reloading"], [pattern]])
        return [unit[0] for unit in units[0]]

    async def _unit_path(self, unit: str) -> str | None:
        try:
            return (await self._call(ROOT, MANAGER, "GetUnit", "s", [unit]))[0]
        except DBusError as exc:
            if exc.type == "org.freedesktop.systemd1.NoSuchUnit":
                return None
            raise

    async def _wait(self, unit: str, take_ref: bool = False) -> ExitStatus | None:
        """Wait until `unit` has ended and return its status, or None when it was collected
        before its status could be read (the exit file has it then)."""
        path = await self._unit_path(unit)
        if path is None:
            return None
        changed = self._changed.setdefault(path, asyncio.Event())
        try:
            if take_ref:
                with contextlib.suppress(DBusError):
                    await self._call(path, "org.freedesktop.systemd1.Unit", "Ref", "", [])
            while True:
                changed.clear()
                try:
                    state, pending_job = await self._state(path)
                except DBusError:
                    return None  # collected
                if state in _ENDED and not pending_job:  # not a start job still queued
                    return await self._result(path, unit)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_SECONDS)
        finally:
            self._changed.pop(path, None)
            with contextlib.suppress(DBusError, OSError):
                await self._call(path, "org.freedesktop.systemd1.Unit", "Unref", "", [])

    async def _state(self, path: str) -> tuple[str, int]:
        """The unit's ActiveState and its pending job's id (0: none), from one snapshot. Two reads
        can straddle the manager running the start job: `inactive` from before it and no job from
        after it, while the main process runs; that unit looked ended, had no ExecMainCode yet,
        and a running job was recorded as "exited with status 127"."""
        reply = await self._call(path, PROPERTIES, "GetAll", "s", ["org.freedesktop.systemd1.Unit"])
        props = reply[0]
        return props["ActiveState"].value, props["Job"].value[0]

    async def _result(self, path: str, unit: str) -> ExitStatus | None:
        try:
            reply = await self._call(path, PROPERTIES, "GetAll", "s", ["org.freedesktop.systemd1.Service"])
        except DBusError:
            return None
        props = {key: value.value for key, value in reply[0].items()}
        code, status, result = props["ExecMainCode"], props["ExecMainStatus"], props["Result"]
        if code == 0:  # never started its main process (a bad ExecStart)
            return ExitStatus.with_cause(127, None)
        exit_status = status_from_unit("exited" if code == 1 else "killed", str(status), result)  # 1: CLD_EXITED
        if exit_status is None:
            raise UnitStopped(unit)
        return exit_status

    async def _stop(self, unit: str) -> None:
        with contextlib.suppress(DBusError):
            await self._call(ROOT, MANAGER, "StopUnit", "ss", [unit, "replace"])
        with contextlib.suppress(TimeoutError, UnitStopped):
            await asyncio.wait_for(self._wait(unit), STOP_TIMEOUT_SECONDS + POLL_SECONDS)

    # ---- D-Bus plumbing --------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        if message.member == "UnitRemoved":
            path = message.body[1]
        elif message.member == "PropertiesChanged":
            path = message.path
        else:
            return
        event = self._changed.get(path)
        if event is not None:
            event.set()

    async def _add_match(self, rule: str) -> None:
        await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))

    async def _call(self, path: str, interface: str, member: str, signature: str, body: list) -> list:
        reply = await self.bus.call(Message(destination=SYSTEMD, path=path, interface=interface, member=member,
                                            signature=signature, body=body))
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name, reply.body[0] if reply.body else reply.error_name, reply)
        return reply.body


async def choose_launcher(mode: str):
    """`subprocess`, `systemd` (required: errors propagate), or `auto`: systemd where the system
    bus lets us manage units, else the subprocess launcher (logged once)."""
    if mode == "subprocess":
        return SubprocessLauncher()
    try:
        launcher = await SystemdLauncher.connect()
        await launcher.probe()
        return launcher
    except (OSError, DBusError, TimeoutError) as exc:
        reason = exc.text if isinstance(exc, DBusError) else str(exc) or type(exc).__name__
        if mode == "systemd":
            raise ConfigError(f'agent.launcher is "systemd" but systemd units cannot be used ({reason}); '
                              'run the agent where the system bus lets it manage repx-job-* units, '
                              'or set agent.launcher = "auto"') from None
        log.info("jobs run as subprocesses: systemd units are not available (%s)", reason)
        return SubprocessLauncher()
