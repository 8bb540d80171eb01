"""Starting the roles: api, scheduler, agent, or all three in one process (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import __version__
from ..agent.loop import Agent
from ..api.agent_calls import InProcessApi
from ..api.app import make_app
from ..api.client import AsyncApi
from ..engine.scheduler import Scheduler
from ..engine.wakeups import wakeups
from ..errors import RepxError
from ..observe import notify
from ..observe.logging import setup_logging
from ..observe.metrics import AgentMetrics, SchedulerMetrics, serve_metrics
from ..service.daemon_config import Settings, read_token
from ..store import queries as q
from ..store.db import AsyncDatabase, StoreFull, open_database
from ..store.startup import check_database, lock_role

log = logging.getLogger("repx")


# The API socket this process made, as (path, device, inode): removed on SIGTERM/SIGINT unless
# another daemon has replaced it since.
_own_socket: tuple[str, int, int] | None = None


# How long an agent stopping may spend sending what SSH targets still wait for (their markers).
SHUTDOWN_FLUSH_SECONDS = 10.0


def _exit_on_signals(loop: asyncio.AbstractEventLoop, role: str,
                     before_exit: Callable[[], Awaitable[None]] | None = None) -> None:
    """Stop on SIGTERM/SIGINT. Nothing else to clean up by design: state is in the store,
    jobs run in their own sessions and are adopted by the next agent. The socket goes, so that
    clients find no daemon rather than a refused connection. `before_exit` (the agent's SSH
    markers) gets SHUTDOWN_FLUSH_SECONDS; a second signal ends the wait."""
    stopping = False

    def exit_now() -> None:
        logging.shutdown()
        os._exit(0)

    async def flush_then_exit() -> None:
        try:
            await asyncio.wait_for(before_exit(), SHUTDOWN_FLUSH_SECONDS)
        except Exception as exc:  # noqa: BLE001 - stopping all the same; the next start catches up
            log.warning("%s: not everything was sent before stopping (%s); the next start sends it", role, exc)
        exit_now()

    def stop(signum: int) -> None:
        nonlocal stopping
        if stopping:
            exit_now()
        stopping = True
        notify.stopping()
        log.info("%s stopping on %s", role, signal.Signals(signum).name)
        if _own_socket is not None:
            path, device, inode = _own_socket
            with contextlib.suppress(OSError):
                found = os.stat(path)
                if (found.st_dev, found.st_ino) == (device, inode):
                    os.unlink(path)
        if before_exit is None:
            exit_now()
        loop.create_task(flush_then_exit())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)


def _claim_socket(path) -> None:
    """Remove a stale socket (nobody listening: its daemon died); refuse one a daemon answers on,
    rather than take its address."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))  # a Unix socket answers or refuses at once: no wait on the loop
    except OSError:
        path.unlink(missing_ok=True)
        log.info("removed the stale socket %s (no daemon listening)", path)
        return
    finally:
        probe.close()
    raise RepxError(f"another repx daemon is listening on {path}; stop it, or give this one its own [api] socket")


def _database(settings: Settings) -> AsyncDatabase:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return AsyncDatabase(open_database(settings.database))


async def start_api(settings: Settings, database: AsyncDatabase, role_registries=()) -> web.AppRunner:
    """`role_registries`: the metrics of the roles sharing this process, served with the API's on /metrics."""
    global _own_socket
    app = make_app(settings, database, __version__, role_registries)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    path = settings.api.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    _claim_socket(path)
    await web.UnixSite(runner, str(path)).start()
    made = path.stat()
    _own_socket = (str(path), made.st_dev, made.st_ino)
    os.chmod(path, settings.api.socket_mode)
    if settings.api.tcp:
        host, _, port = settings.api.tcp.rpartition(":")
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    with contextlib.suppress(StoreFull):  # the API serves reads on a full disk; the next touch records it
        await database.run(q.touch_role, database.db, "api", socket.gethostname(), os.getpid(), time.time())
    return runner


async def _keep_role_fresh(database: AsyncDatabase, name: str) -> None:
    started = time.time()
    while True:
        await asyncio.sleep(5)
        with contextlib.suppress(StoreFull):  # logged by the store; tried again in 5 s
            await database.run(q.touch_role, database.db, name, socket.gethostname(), os.getpid(), started)


def agent_api(settings: Settings) -> AsyncApi:
    return AsyncApi(settings.agent.api or str(settings.api.socket), read_token(settings.agent.token_file))


async def run_api(settings: Settings) -> None:
    _exit_on_signals(asyncio.get_running_loop(), "api")
    database = _database(settings)
    wakeups(database).across_processes(settings.state_dir, "api")
    await start_api(settings, database)
    listeners = str(settings.api.socket) + (f" and {settings.api.tcp}" if settings.api.tcp else "")
    notify.ready(f"serving on {listeners}")
    log.info("api listening on %s", listeners)
    await asyncio.gather(_keep_role_fresh(database, "api"), notify.watchdog_loop(lambda: True))


async def run_scheduler(settings: Settings) -> None:
    _exit_on_signals(asyncio.get_running_loop(), "scheduler")
    database = _database(settings)
    wakeups(database).across_processes(settings.state_dir, "scheduler")
    metrics = SchedulerMetrics()
    if settings.scheduler.metrics:
        await serve_metrics(metrics.registry, settings.scheduler.metrics)
    await Scheduler(settings.scheduler, database, metrics).run()


async def run_agent(settings: Settings) -> None:
    metrics = AgentMetrics()
    agent = Agent(settings, agent_api(settings), metrics)
    _exit_on_signals(asyncio.get_running_loop(), "agent", agent.flush_remote)
    if settings.agent.metrics:
        await serve_metrics(metrics.registry, settings.agent.metrics)
    await agent.run()


async def run_all(settings: Settings) -> None:
    """api, scheduler and agent in one process, sharing one database connection."""
    database = _database(settings)
    scheduler = Scheduler(settings.scheduler, database)
    # The agent answers itself through the store, not over HTTP to its own socket (unless it is
    # pointed at another API).
    direct = settings.agent.api in (None, "", str(settings.api.socket))
    agent = Agent(settings, InProcessApi(database, settings) if direct else agent_api(settings))
    _exit_on_signals(asyncio.get_running_loop(), "all", agent.flush_remote)
    await start_api(settings, database, (scheduler.metrics.registry, agent.metrics.registry))
    if settings.scheduler.metrics:
        await serve_metrics(scheduler.metrics.registry, settings.scheduler.metrics)
    if settings.agent.metrics:
        await serve_metrics(agent.metrics.registry, settings.agent.metrics)
    tcp_metrics = [f"{role} {address}" for role, address in (("scheduler", settings.scheduler.metrics), ("agent", settings.agent.metrics)) if address]
    log.info("repxd all: api on %s, scheduler and agent %s in this process; metrics of all roles on the socket's /metrics%s",
             settings.api.socket, agent.id, f", and on TCP ({', '.join(tcp_metrics)})" if tcp_metrics else "")
    await asyncio.gather(scheduler.run(), agent.run(), _keep_role_fresh(database, "api"))


ROLES = {"api": run_api, "scheduler": run_scheduler, "agent": run_agent, "all": run_all}


# The roles that keep state in state_dir, and the locks each holds there.
STATE_LOCKS = {"api": ("api",), "scheduler": ("scheduler",), "all": ("api", "scheduler")}


def start(role: str, settings: Settings) -> None:
    setup_logging(role, settings.log_level, settings.log_journald)
    try:
        held = [lock_role(settings.state_dir, name) for name in STATE_LOCKS.get(role, ())]
        if held:
            check_database(settings.database)
    except RepxError as exc:  # one line on stderr (the journal under systemd), no traceback
        print(f"repxd: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the state directory itself is unusable (permissions, a file in its place)
        print(f"repxd: error: state_dir {settings.state_dir}: {exc.strerror}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        asyncio.run(ROLES[role](settings))
    except RepxError as exc:  # e.g. a token file it cannot use: one line, as above
        print(f"repxd: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        log.error("%s cannot start: %s", role, exc)
        sys.exit(1)
