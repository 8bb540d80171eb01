"""Job processes started through the spawner (`spawner.py`), one per event loop, and awaited
through its single socket: no fork of this process per job, no watcher thread per child."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SPAWNER = Path(__file__).with_name("spawner.py")
MAX_MESSAGE_BYTES = 4096  # the spawner's answers: a pid, a status or an error line
# Environments the spawner keeps, the newest ones: a job whose environment equals one of them
# sends its id instead (~2 KB less to encode, send and decode per job). Same bound in spawner.py.
KEPT_ENVIRONMENTS = 8


# A request carrying a job's inputs and parameters up to this size has the spawner write them;
# a larger one (a huge parameter set) is prepared here, well within the socket's message size.
MAX_PREPARED_REQUEST_BYTES = 64 << 10


class NotPrepared(Exception):
    """The spawner did not prepare the job (not a first attempt): prepare it, then spawn again."""


class ProcessExit(int):
    """A process's exit status (negative for a signal). `recorded`: the spawner wrote the
    evidence of its success that the request asked for (`success`)."""

    recorded = False


class SpawnerGone(RuntimeError):
    """The spawner process exited: the processes it was watching are no longer observed."""


@dataclass(frozen=True)
class Identity:
    """Who a process runs as: a uid with its primary and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]


class SpawnedProcess:
    """A process the spawner started: its pid, and its exit status once it exited (negative for
    a signal), like `asyncio.subprocess.Process`."""

    def __init__(self, pid: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = exited
        exited.add_done_callback(self._set_returncode)

    def _set_returncode(self, exited: asyncio.Future[int]) -> None:
        if not exited.cancelled() and exited.exception() is None:
            self.returncode = exited.result()

    async def wait(self) -> int:
        # Shielded: a caller's timeout or cancellation stops its waiting, not the watch.
        return await asyncio.shield(self._exited)


class Spawner:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            # In its own session, like the jobs: a signal to this process's group (Ctrl-C, a kill
            # of the group) leaves it to write the records of the jobs it started.
            self._process = subprocess.Popen(
                [sys.executable, "-S", str(SPAWNER), str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        self._channel.setblocking(False)
        self._ids = itertools.count()
        self._starting: dict[int, asyncio.Future[SpawnedProcess]] = {}
        self._running: dict[int, asyncio.Future[int]] = {}
        self._environments: list[tuple[int, dict[str, str]]] = []  # (id, env) the spawner keeps, newest last
        self._waiting_for_room: asyncio.Future[None] | None = None
        self._next_environment_id = 0  # ids without gaps: the spawner keeps the newest KEPT_ENVIRONMENTS
        self.alive = True
        loop.add_reader(self._channel, self._receive)

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str, fds: list[int],
                    identity: Identity | None, *, logs: tuple[str, str] | None = None,
                    exit_record: str | None = None, prepare: dict | None = None,
                    success: dict | None = None) -> SpawnedProcess:
        """Start `argv` with `fds` as its descriptors 3, 4, ... (in that order) and the files
        `logs` (created or truncated by the spawner) as its stdout and stderr; without `logs` the
        first two of `fds` are its stdout and stderr. With `exit_record` (a path) the spawner
        creates that file and writes the exit status there, before it closes its copies of `fds`.
        A log or record that cannot be opened raises OSError, as opening it here would.
        `prepare` (see `spawner.prepare_first_attempt`): the spawner makes the job's directories
        and writes its JSON files first; NotPrepared when it did not (not a first attempt).
        `success` (see `spawner.record_success`): the evidence it writes if the process exits with 0."""
        if not self.alive:
            raise SpawnerGone("the process that starts the jobs exited")
        request_id = next(self._ids)
        started = self.loop.create_future()
        self._starting[request_id] = started
        while True:
            # Built anew after each wait: another request may have sent this environment meanwhile.
            kept_id = self._kept_environment(env)
            environment = {"env_id": self._next_environment_id, "env": env} if kept_id is None else {"env_id": kept_id}
            message = json.dumps({"id": request_id, "argv": argv, **environment, "cwd": cwd, "logs": logs,
                                  "exit_record": exit_record, "prepare": prepare, "success": success,
                                  "identity": None if identity is None else [identity.uid, identity.gid, list(identity.groups)]})
            encoded = message.encode()
            if prepare is not None and len(encoded) > MAX_PREPARED_REQUEST_BYTES:
                del self._starting[request_id]
                raise NotPrepared()
            try:
                socket.send_fds(self._channel, [encoded], fds)
                break
            except BlockingIOError:  # its queue is full: wait for room
                await asyncio.shield(self._room())
        if kept_id is None:  # only once sent: the spawner keeps it from now on
            self._environments = [*self._environments[1 - KEPT_ENVIRONMENTS:], (self._next_environment_id, dict(env))]
            self._next_environment_id += 1
        return await started

    def _room(self) -> asyncio.Future[None]:
        """Done when the socket has room again; one future for all waiters, since the loop keeps
        one writer callback per descriptor (a second add_writer would replace the first's)."""
        if self._waiting_for_room is None:
            self._waiting_for_room = self.loop.create_future()
            self.loop.add_writer(self._channel, self._has_room)
        return self._waiting_for_room

    def _has_room(self) -> None:
        self.loop.remove_writer(self._channel)
        waiting, self._waiting_for_room = self._waiting_for_room, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _kept_environment(self, env: dict[str, str]) -> int | None:
        """The id of an environment equal to `env` that the spawner keeps, if any."""
        for env_id, kept in reversed(self._environments):
            if kept == env:
                return env_id
        return None

    def _receive(self) -> None:
        while True:
            try:
                data = self._channel.recv(MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self._gone()
                return
            answer = json.loads(data)
            if "id" in answer:
                started = self._starting.pop(answer["id"])
                if "unprepared" in answer:
                    if not started.cancelled():
                        started.set_exception(NotPrepared())
                    continue
                if "error" in answer:
                    if answer.get("filename"):  # a log or the exit record: said as open() would
                        started.set_exception(OSError(answer["errno"], answer["error"], answer["filename"]))
                    else:
                        started.set_exception(OSError(f"cannot start the job's process: {answer['error']}"))
                    continue
                exited = self.loop.create_future()
                self._running[answer["pid"]] = exited
                if not started.cancelled():
                    started.set_result(SpawnedProcess(answer["pid"], exited))
            else:
                exited = self._running.pop(answer["pid"])
                if not exited.done():
                    status = ProcessExit(answer["status"])
                    status.recorded = answer.get("recorded", False)
                    exited.set_result(status)

    def _gone(self) -> None:
        self.alive = False
        self.loop.remove_reader(self._channel)
        if self._waiting_for_room is not None:  # requests waiting for room learn it is gone
            self.loop.remove_writer(self._channel)
            if not self._waiting_for_room.done() and not self.loop.is_closed():
                self._waiting_for_room.set_exception(SpawnerGone("the process that starts the jobs exited"))
            self._waiting_for_room = None
        self._channel.close()
        for future in [*self._starting.values(), *self._running.values()]:
            if not future.done() and not self.loop.is_closed():
                future.set_exception(SpawnerGone("the process that starts the jobs exited while they ran"))
        self._starting.clear()
        self._running.clear()


    def close(self) -> None:
        """Let the spawner exit (it sees EOF) and reap it, unless processes it started run on:
        it then stays for them, and exits once it wrote their exit records."""
        running = bool(self._running)
        if self.alive:
            self._gone()
        if not running:
            self._process.wait()


_current: Spawner | None = None


def spawner() -> Spawner:
    """The running loop's spawner, started on first use, and again for a new loop (one that
    belonged to an earlier loop is let go) or when it exited."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or not _current.alive or _current.loop is not loop:
        if _current is not None:
            _current.close()
        _current = Spawner(loop)
    return _current


@atexit.register
def _close_spawner() -> None:
    # Reaped before this process exits, so its CPU time (and its children's) counts as ours.
    if _current is not None:
        _current.close()
