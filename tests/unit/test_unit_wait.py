"""Waiting for a job's transient unit reads a consistent state from the system manager.

systemd cannot run here (it is not PID 1), so the manager is stood in for by `_Manager`: it answers
the D-Bus calls the launcher makes and, like systemd, runs its queued work between two messages
(the start job sits in an idle-priority run queue while D-Bus calls are served). A submitter's
unit has a start step (handing `out/` over), so its start job stays pending until the main
process has been forked, and the unit then is `active` with no job and no main-process result."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dbus_next import Message, MessageType, Variant

from repxd.exec.launcher import guarded, launch_request
from repxd.exec.layout import OutputLayout, Preparation
from repxd.exec.runtimes import Invocation
from repxd.exec.systemd_unit import SystemdLauncher

UNIT = "repx-job-abc-generate-1.0-1.service"
UNIT_PATH = "/org/freedesktop/systemd1/unit/repx_2djob_2dabc"
NO_JOB = [0, "/"]
JOB_SECONDS = 0.3

# The unit's life after StartTransientUnit returned: start job queued; start job done and main
# process running; main process exited 0. Each row: ActiveState, Job, ExecMainCode, ExecMainStatus.
PHASES = [
    ("inactive", [7, "/org/freedesktop/systemd1/job/7"], 0, 0),
    ("active", NO_JOB, 0, 0),
    ("inactive", NO_JOB, 1, 0),
]


class _Manager:
    """A bus whose only peer is a stand-in for systemd: the first read of the unit's state lets
    its start job run; the main process exits JOB_SECONDS later. Each change is signalled
    (PropertiesChanged), as systemd does to subscribers."""

    def __init__(self) -> None:
        self.phase = 0
        self.handler = None

    def add_message_handler(self, handler) -> None:
        self.handler = handler

    def _unit_properties(self) -> dict:
        state, job, _code, _status = PHASES[self.phase]
        return {"ActiveState": Variant("s", state), "Job": Variant("(uo)", job), "Id": Variant("s", UNIT)}

    def _service_properties(self) -> dict:
        _state, _job, code, status = PHASES[self.phase]
        return {"ExecMainCode": Variant("i", code), "ExecMainStatus": Variant("i", status),
                "Result": Variant("s", "success")}

    def _answer(self, message: Message) -> list:
        if message.member == "StartTransientUnit":
            # What systemd would find as it starts the unit: its working directory (`out/`, which a
            # submitter's unit also hands over first) and the directory its logs go to.
            properties = {name: variant.value for name, variant in message.body[2]}
            found = Path(properties["WorkingDirectory"]), Path(properties["StandardOutputFileToAppend"]).parent
            self.found_at_start = [sorted(p.name for p in d.iterdir()) if d.is_dir() else None for d in found]
            return []
        if message.member == "GetUnit":
            return [UNIT_PATH]
        if message.member in ("Ref", "Unref"):
            return []
        interface = message.body[0]
        if message.member == "Get":
            return [self._unit_properties()[message.body[1]]]
        if message.member == "GetAll" and interface == "org.freedesktop.systemd1.Unit":
            return [self._unit_properties()]
        if message.member == "GetAll" and interface == "org.freedesktop.systemd1.Service":
            return [self._service_properties()]
        raise AssertionError(f"unexpected call {message.member} {message.body}")

    def _advance(self) -> None:
        self.phase += 1
        self.handler(Message(message_type=MessageType.SIGNAL, path=UNIT_PATH,
                             interface="org.freedesktop.DBus.Properties", member="PropertiesChanged"))

    async def call(self, message: Message) -> Message:
        body = self._answer(message)
        reads_unit_state = message.member in ("Get", "GetAll") and message.body[0] == "org.freedesktop.systemd1.Unit"
        if reads_unit_state and self.phase == 0:
            self._advance()  # the start job runs between this reply and the launcher's next call
            asyncio.get_running_loop().call_later(JOB_SECONDS, self._advance)  # the main process exits
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1, body=body)


def test_a_unit_whose_start_job_runs_between_two_reads_is_waited_for_until_it_exits():
    manager = _Manager()
    launcher = SystemdLauncher(manager)
    status = asyncio.run(asyncio.wait_for(launcher._wait(UNIT), 10))
    assert status == 0, f"a job that exited 0 was recorded with status {status}"
    assert manager.phase == len(PHASES) - 1, "the launcher stopped waiting while the job's process still ran"


def test_a_unit_starts_in_directories_its_launcher_prepared_for_this_attempt(tmp_path):
    """An attempt after a failed one: the launcher empties `out/`, clears the marker and writes
    the job's files before it asks for the unit, and leaves the success's evidence to `finish`."""
    layout = OutputLayout(tmp_path)
    out, repx = layout.out_dir("abc-generate-1.0"), layout.repx_dir("abc-generate-1.0")
    out.mkdir(parents=True)
    repx.mkdir()
    (out / "partial").write_text("from the attempt before")
    (repx / "FAIL").touch()
    manager = _Manager()
    launcher = SystemdLauncher(manager)
    prepare = Preparation(out, repx, True, {"inputs.json": {}, "parameters.json": {"n": 1}})

    async def main():
        async with guarded(layout.guard(repx)) as guard:
            return await launcher.run(Invocation(["/bin/true"], {}, out), repx, guard,
                                      launch_request("abc-generate-1.0", "", 1), prepare)

    status = asyncio.run(asyncio.wait_for(main(), 10))
    assert manager.found_at_start == [[], ["inputs.json", "parameters.json", "stderr.log", "stdout.log"]]
    assert status == 0 and not status.recorded
