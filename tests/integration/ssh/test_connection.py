"""SshConnection against the real test host (tests/ssh_host.py): commands, host keys, keys, drops."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from repxd.targets.ssh.connection import (
    SshAuthFailed,
    SshConnection,
    SshToolMissing,
    SshUnknownHostKey,
    is_connection_problem,
)
from repxd.user_config import SshSettings


def by_alias(ssh_host, **settings) -> SshConnection:
    """The target as a user with the host in ~/.ssh/config would write it: `address = "repx-remote"`."""
    return SshConnection("remote", "repx-remote", SshSettings(config_file=ssh_host.ssh_config, **settings))


def by_address(ssh_host, **settings) -> SshConnection:
    return SshConnection("remote", f"{ssh_host.user}@{ssh_host.host}:{ssh_host.port}",
                         SshSettings(config_file=ssh_host.workdir / "no-such-config", **settings))


def test_commands_round_trip_quoted_and_counted_over_one_connection(ssh_host):
    connection = by_alias(ssh_host)

    async def scenario():
        echoed = await connection.run(["printf", "%s|", "two words", "it's", "$HOME"])
        fed = await connection.run(["cat"], stdin="from stdin\n")
        first = await connection.connection()
        failed = await connection.run(["sh", "-c", "echo oops >&2; exit 3"])
        script = await connection.run_script("cd /; pwd; whoami")
        await connection.put("dir/sub/file.bin", b"\x00\x01binary\n", mode=0o755)
        back = await connection.get("dir/sub/file.bin")
        mode = await connection.run(["stat", "-c", "%a", "dir/sub/file.bin"])
        same = await connection.connection() is first
        await connection.close()
        return echoed, fed, failed, script, back, mode, same
    echoed, fed, failed, script, back, mode, same = asyncio.run(scenario())
    assert echoed.ok and echoed.stdout == "two words|it's|$HOME|"
    assert fed.stdout == "from stdin\n"
    assert failed.returncode == 3 and failed.stderr == "oops\n" and "oops" in failed.failure()
    assert script.stdout == f"/\n{ssh_host.user}\n"
    assert back == b"\x00\x01binary\n" and mode.stdout.strip() == "755"
    assert same, "the second call must reuse the target's connection"
    assert connection.calls == {"printf": 1, "cat": 1, "sh": 2, "put": 1, "get": 1, "stat": 1}


def test_missing_remote_tool_is_named(ssh_host):
    connection = by_alias(ssh_host)
    with pytest.raises(SshToolMissing) as raised:
        asyncio.run(connection.run(["sbatch-not-here", "--version"]))
    assert str(raised.value) == (f"target 'remote': sbatch-not-here is not installed on {ssh_host.host} "
                                 "(or not on the PATH of a non-interactive ssh session)")
    assert not is_connection_problem(raised.value)


def test_unknown_host_key_is_refused_with_the_command_to_trust_it(ssh_host, tmp_path):
    known = tmp_path / "known_hosts"
    connection = by_address(ssh_host, known_hosts=known, identity_file=ssh_host.client_key)
    with pytest.raises(SshUnknownHostKey) as raised:
        asyncio.run(connection.run(["true"]))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("target 'remote': host key of")
    assert f"`ssh-keyscan -p 22 {ssh_host.host} >> {known}`" in message
    assert f"`ssh {ssh_host.user}@{ssh_host.host}`" in message
    assert not is_connection_problem(raised.value)
    assert not known.exists(), "refusing must not record anything"
    # The command it names works: after it, the same connection settings are accepted.
    if shutil.which("ssh-keyscan"):
        subprocess.run(f"ssh-keyscan -p 22 {ssh_host.host} >> {known}", shell=True, check=True,
                       capture_output=True)
        assert asyncio.run(connection.run(["true"])).ok


def test_trust_on_first_use_records_the_key_then_verifies_it(ssh_host, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    connection = by_address(ssh_host, known_hosts=known, identity_file=ssh_host.client_key,
                            trust_on_first_use=True)
    assert asyncio.run(connection.run(["true"])).ok
    recorded = known.read_text()
    assert recorded.split()[:2] == ssh_host.known_hosts.read_text().split()[:2]  # host and key type
    assert recorded.split()[2] == ssh_host.known_hosts.read_text().split()[2]  # the server's real key
    # The recorded line is what the system ssh (strict) accepts, too.
    ssh = subprocess.run([*connection.ssh_options(), connection.rsync_host, "true"], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    assert ssh.returncode == 0, ssh.stderr
    # A different key for the same host is refused even with trust on first use.
    known.write_text(f"{ssh_host.host} {(ssh_host.client_key.with_suffix('.pub')).read_text()}")
    with pytest.raises(SshUnknownHostKey, match="does not match"):
        asyncio.run(by_address(ssh_host, known_hosts=known, identity_file=ssh_host.client_key,
                               trust_on_first_use=True).run(["true"]))


def test_a_key_the_host_does_not_accept_is_an_authentication_failure(ssh_host, tmp_path):
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    connection = by_address(ssh_host, known_hosts=ssh_host.known_hosts, identity_file=other)
    with pytest.raises(SshAuthFailed) as raised:
        asyncio.run(connection.run(["true"]))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"target 'remote': {ssh_host.user}@{ssh_host.host}:22 refused our key")
    assert "authorized_keys" in message
    assert not is_connection_problem(raised.value)


def test_key_from_a_systemd_credential(ssh_host, tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(ssh_host.client_key, credentials / "remote-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    connection = by_address(ssh_host, known_hosts=ssh_host.known_hosts, credential="remote-key")
    assert asyncio.run(connection.run(["whoami"])).stdout == f"{ssh_host.user}\n"


def test_cut_link_is_a_connection_problem_and_the_connection_comes_back(ssh_host):
    connection = by_alias(ssh_host, keepalive_interval=0.5, keepalive_count_max=2, connect_timeout=2)

    async def scenario():
        assert (await connection.run(["true"])).ok
        ssh_host.cut_link()
        try:
            problems = []
            for _ in range(2):  # the established connection drops, then reconnecting fails
                try:
                    await connection.run(["sleep", "5"], timeout=30)
                except Exception as exc:  # noqa: BLE001 - classified below
                    problems.append(exc)
        finally:
            ssh_host.restore_link()
        back = await connection.run(["echo", "back"])
        return problems, back
    problems, back = asyncio.run(scenario())
    assert len(problems) == 2
    assert all(is_connection_problem(p) for p in problems), problems
    assert all(str(p).startswith("target 'remote': ") and "\n" not in str(p) for p in problems)
    assert "jobs wait until the host is reachable" in str(problems[1])
    assert back.stdout == "back\n"


def test_many_commands_at_once_share_the_connection(ssh_host):
    """More at once than sshd's MaxSessions (10): they queue instead of failing."""
    connection = by_alias(ssh_host)

    async def scenario():
        results = await asyncio.gather(*(connection.run(["sh", "-c", f"sleep 0.3; echo {i}"]) for i in range(30)))
        return [r.stdout for r in results]
    assert asyncio.run(scenario()) == [f"{i}\n" for i in range(30)]
    assert connection.calls["sh"] == 30


def test_reading_a_missing_file_is_one_line(ssh_host):
    with pytest.raises(Exception) as raised:
        asyncio.run(by_alias(ssh_host).get("no/such/file"))
    assert str(raised.value) == ("target 'remote': reading no/such/file failed: "
                                 "cat: no/such/file: No such file or directory")
    assert not is_connection_problem(raised.value)
