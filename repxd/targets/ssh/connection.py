"""One SSH connection per target (asyncssh): host keys checked against known_hosts, keys from the
agent, a file or a systemd credential, keepalives, and re-established after a drop.

`SshConnection` is a `CommandRunner` (the seam the SLURM launcher uses), plus small-file helpers.
Every failure is an `SshError` with one line naming the target and what to do; callers ask
`is_connection_problem(exc)` to decide between keeping jobs queued and failing them."""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh.config import SSHClientConfig

from ...errors import ConfigError
from ...user_config import SshSettings, TargetConfig
from ..commands import CommandMissing, CommandResult, RunnerUnreachable

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
# sshd's MaxSessions defaults to 10 channels per connection; beyond it a command's channel is
# refused, which would look like a dropped link. Commands past this many wait their turn.
MAX_SESSIONS = 8
CHANNEL_RETRIES = 20  # ~10 s in all


class SshError(Exception):
    """A failure reaching or using the target; the message is one line naming the target."""

    connection_problem = False


class SshUnreachable(SshError, RunnerUnreachable):
    """No route, refused, timed out or dropped: transient, the jobs wait for the host."""

    connection_problem = True


class SshAuthFailed(SshError):
    pass


class SshUnknownHostKey(SshError):
    pass


class SshToolMissing(SshError, CommandMissing):
    pass


def is_connection_problem(exc: BaseException) -> bool:
    """True when the host may come back by itself: keep the jobs queued rather than failing them."""
    return isinstance(exc, SshError) and exc.connection_problem


@dataclass(frozen=True)
class Destination:
    """`user@host[:port]` or an ssh_config alias; unset parts come from the ssh config."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, address: str) -> Destination:
        user, _, hostport = address.rpartition("@")
        host, port = hostport, None
        if hostport.startswith("["):  # [v6addr]:port
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] or None
        elif hostport.count(":") == 1:
            host, port = hostport.split(":")
        if not host or (port is not None and not str(port).isdigit()):
            raise ConfigError(f"address {address!r} is not user@host[:port] or an ssh_config alias")
        return cls(host=host, user=user or None, port=int(port) if port else None)


def remote_path(path: Path | str) -> str:
    """A remote path for a shell word: `~/x` and `x` are relative to the remote home (commands start
    there), so `~` must not be quoted into a literal directory name."""
    text = str(path)
    if text == "~":
        return "."
    return text[2:] if text.startswith("~/") else text


@dataclass
class SshConnection:
    target_name: str
    address: str
    settings: SshSettings = field(default_factory=SshSettings)
    calls: Counter = field(default_factory=Counter)
    _connection: asyncssh.SSHClientConnection | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    _sessions: asyncio.Semaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.destination = Destination.parse(self.address)
        # What an ssh_config alias stands for: known_hosts lines and messages name the real host.
        given = self.destination
        config = SSHClientConfig.load(None, self.config_files, False, False, False, getpass.getuser(),
                                      given.user or (), given.host, given.port or ())
        self.host: str = config.get("Hostname") or given.host
        self.port: int = given.port or config.get("Port") or 22
        self.user: str | None = given.user or config.get("User")
        configured = config.get("UserKnownHostsFile") or []
        self.known_hosts = (self.settings.known_hosts or Path(configured[0] if configured else DEFAULT_KNOWN_HOSTS)
                            ).expanduser()

    @classmethod
    def from_target(cls, name: str, target: TargetConfig) -> SshConnection:
        if not target.address:
            raise ConfigError(f"target {name!r} has no address; it is not an SSH target")
        return cls(name, target.address, target.ssh or SshSettings())

    # -- settings as files -------------------------------------------------------------------

    @property
    def config_files(self) -> list[str]:
        path = (self.settings.config_file or DEFAULT_SSH_CONFIG).expanduser()
        return [str(path)] if path.exists() else []

    def identity_file(self) -> Path | None:
        if self.settings.credential:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(f"target {self.target_name!r}: ssh.credential {self.settings.credential!r} needs "
                                  "$CREDENTIALS_DIRECTORY (run repxd under systemd with LoadCredential=)")
            return Path(directory) / self.settings.credential
        return self.settings.identity_file.expanduser() if self.settings.identity_file else None

    def _connect_options(self, known_hosts) -> dict:
        options = dict(known_hosts=known_hosts, config=self.config_files,
                       keepalive_interval=self.settings.keepalive_interval,
                       keepalive_count_max=self.settings.keepalive_count_max,
                       connect_timeout=self.settings.connect_timeout)
        if self.destination.user:
            options["username"] = self.destination.user
        if self.destination.port:
            options["port"] = self.destination.port
        identity = self.identity_file()
        if identity is not None:
            if not identity.is_file():
                raise ConfigError(f"target {self.target_name!r}: identity file {identity} does not exist")
            options.update(client_keys=[str(identity)], agent_path=None)
        return options

    def ssh_options(self) -> list[str]:
        """The system `ssh` arguments equivalent to this connection (for rsync's `-e`)."""
        argv = ["ssh"]
        if self.config_files:
            argv += ["-F", self.config_files[0]]
        if self.destination.port:
            argv += ["-p", str(self.destination.port)]
        identity = self.identity_file()
        if identity is not None:
            argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
        argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        interval = max(1, int(self.settings.keepalive_interval))
        return argv + ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                       "-o", f"ConnectTimeout={max(1, int(self.settings.connect_timeout))}",
                       "-o", f"ServerAliveInterval={interval}",
                       "-o", f"ServerAliveCountMax={self.settings.keepalive_count_max}"]

    @property
    def rsync_host(self) -> str:
        """`[user@]host` as the system ssh (given ssh_options) understands it, for `host:path`."""
        host = f"[{self.destination.host}]" if ":" in self.destination.host else self.destination.host
        return f"{self.destination.user}@{host}" if self.destination.user else host

    # -- connecting ---------------------------------------------------------------------------

    def _trust_hint(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f"-p {self.port} " if self.port != 22 else ""
        once = f"ssh {port}{user}{self.host}"
        return (f"trust it with `ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}` "
                f"(or connect once with `{once}`), or set ssh.trust_on_first_use = true")

    async def _open(self) -> asyncssh.SSHClientConnection:
        name, host = self.target_name, self.host
        try:
            try:
                return await asyncssh.connect(self.destination.host, **self._connect_options(
                    str(self.known_hosts) if self.known_hosts.exists() else asyncssh.import_known_hosts("")))
            except asyncssh.HostKeyNotVerifiable as exc:
                if self._known_key_for_host():
                    raise SshUnknownHostKey(f"target {name!r}: the host key of {host} does not match {self.known_hosts} "
                                            f"(the host was reinstalled, or someone is in between); check it, then "
                                            f"remove the old line with `ssh-keygen -R {host} -f {self.known_hosts}`") from exc
                if not self.settings.trust_on_first_use:
                    raise SshUnknownHostKey(f"target {name!r}: host key of {host} is not in {self.known_hosts}; "
                                            f"{self._trust_hint()}") from exc
                connection = await asyncssh.connect(self.destination.host, **self._connect_options(None))
                self._record_host_key(connection.get_server_host_key())
                return connection
        except asyncssh.PermissionDenied as exc:
            raise SshAuthFailed(f"target {name!r}: {self.address} refused our key ({exc.reason}); add the public key to "
                                f"the remote ~/.ssh/authorized_keys, or set ssh.identity_file") from exc
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise self.unreachable(_reason(exc)) from exc

    def _known_key_for_host(self) -> bool:
        if not self.known_hosts.exists():
            return False
        known = asyncssh.read_known_hosts(str(self.known_hosts))
        trusted = known.match(self.host, "", self.port)[0]
        return bool(trusted)

    def _record_host_key(self, key: asyncssh.SSHKey | None) -> None:
        if key is None:
            return
        pattern = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.known_hosts.open("a") as out:
            out.write(f"{pattern} {key.export_public_key('openssh').decode().strip()}\n")

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The target's one connection, opened (again) when there is none or it was dropped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (embedded runs use one each): start afresh
            self._connection, self._loop, self._lock = None, loop, asyncio.Lock()
            self._sessions = asyncio.Semaphore(MAX_SESSIONS)
        async with self._lock:
            if self._connection is None or self._connection.is_closed():
                self._connection = await self._open()
            return self._connection

    def _dropped(self, exc: BaseException) -> SshUnreachable:
        if self._connection is not None:
            self._connection.abort()
            self._connection = None
        return self.unreachable(f"connection lost: {_reason(exc)}")

    def unreachable(self, reason: str) -> SshUnreachable:
        """The error for a connection problem seen elsewhere (the system ssh under rsync, say)."""
        return SshUnreachable(f"target {self.target_name!r}: cannot reach {self.address}: {reason}; "
                              "jobs wait until the host is reachable")

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            await self._connection.wait_closed()
            self._connection = None

    # -- commands -----------------------------------------------------------------------------

    async def _exec(self, command: str, stdin: str | bytes | None, timeout: float,
                    binary: bool = False) -> asyncssh.SSHCompletedProcess | None:
        connection = await self.connection()
        attempt = 0
        while True:
            try:
                async with self._sessions:
                    return await connection.run(command, input=stdin, timeout=timeout, check=False,
                                                encoding=None if binary else "utf-8", errors="replace")
            except asyncssh.TimeoutError:
                return None
            except asyncssh.ChannelOpenError as exc:
                # sshd counts a channel until its close completes, so a busy connection can be
                # refused one for a moment; the connection itself is fine while it is open.
                if connection.is_closed() or attempt == CHANNEL_RETRIES:
                    raise self._dropped(exc) from exc
                attempt += 1
                await asyncio.sleep(0.05 * attempt)
            except (OSError, asyncssh.Error) as exc:
                raise self._dropped(exc) from exc

    async def run(self, argv: list[str], stdin: str | None = None, timeout: float = 120.0,
                  identity=None) -> CommandResult:
        """`identity` has no meaning here: remote commands run as the address's account."""
        self.calls[os.path.basename(argv[0])] += 1
        done = await self._exec(shlex.join(argv), stdin, timeout)
        if done is None:
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
        if done.exit_status == 127 and "not found" in (done.stderr or "") and argv[0] in done.stderr:
            raise SshToolMissing(f"target {self.target_name!r}: {argv[0]} is not installed on {self.host} "
                                 "(or not on the PATH of a non-interactive ssh session)")
        return CommandResult(tuple(argv), _status(done), done.stdout or "", done.stderr or "")

    async def run_script(self, script: str, timeout: float = 120.0) -> CommandResult:
        """A POSIX sh script on the remote, as one command (and one counted call, `sh`)."""
        self.calls["sh"] += 1
        done = await self._exec(f"sh -c {shlex.quote(script)}", None, timeout)
        if done is None:
            return CommandResult(("sh", "-c"), 124, "", f"timed out after {timeout:.0f}s")
        return CommandResult(("sh", "-c"), _status(done), done.stdout or "", done.stderr or "")

    async def put(self, path: str, content: bytes, mode: int = 0o644, timeout: float = 120.0) -> None:
        """Write a small file atomically (temp file, then rename): readers never see half of it."""
        self.calls["put"] += 1
        target = shlex.quote(remote_path(path))
        script = (f'set -e; d=$(dirname {target}); mkdir -p "$d"; t="$d/.put.$$"; cat > "$t"; '
                  f'chmod {mode:o} "$t"; mv -f "$t" {target}')
        done = await self._exec(f"sh -c {shlex.quote(script)}", content, timeout, binary=True)
        if done is None or done.exit_status != 0:
            said = "timed out" if done is None else _last_line(done.stderr) or f"exit status {done.exit_status}"
            raise SshError(f"target {self.target_name!r}: writing {path} failed: {said}")

    async def get(self, path: str, timeout: float = 120.0) -> bytes:
        self.calls["get"] += 1
        done = await self._exec(f"cat {shlex.quote(remote_path(path))}", None, timeout, binary=True)
        if done is None or done.exit_status != 0:
            said = "timed out" if done is None else _last_line(done.stderr) or f"exit status {done.exit_status}"
            raise SshError(f"target {self.target_name!r}: reading {path} failed: {said}")
        return done.stdout


def _status(done: asyncssh.SSHCompletedProcess) -> int:
    if done.exit_status is not None and done.exit_status >= 0:
        return done.exit_status
    return 128 + 9 if done.exit_signal else 255  # killed by a signal, or the channel closed without a status


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


_connections: dict[tuple[str, str], SshConnection] = {}


def connection_for(name: str, target: TargetConfig) -> SshConnection:
    """The one connection object per target in this process, reused by every caller."""
    key = (name, target.address or "")
    if key not in _connections:
        _connections[key] = SshConnection.from_target(name, target)
    return _connections[key]
