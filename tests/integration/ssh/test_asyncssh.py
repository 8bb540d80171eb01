"""Python's asyncssh reaches the test host with explicit known_hosts and client key (ssh reads
~/.ssh from the passwd entry, so nothing implicit is used), and a setsid'd remote command outlives
a dropped connection."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest


async def _connect(ssh_host, known_hosts):
    return await asyncssh.connect(ssh_host.host, port=ssh_host.port, username=ssh_host.user,
                                  known_hosts=str(known_hosts), client_keys=[str(ssh_host.client_key)])


def test_asyncssh_runs_a_command_that_outlives_the_connection(ssh_host):
    async def scenario() -> tuple[str, str]:
        connection = await _connect(ssh_host, ssh_host.known_hosts)
        uname = (await connection.run("uname -a", check=True)).stdout
        await connection.run("rm -f outlived; setsid nohup sh -c 'sleep 2; echo finished > outlived' "
                             ">/dev/null 2>&1 < /dev/null &", check=True)
        connection.abort()  # dropped, not closed politely
        await asyncio.sleep(3)
        async with await _connect(ssh_host, ssh_host.known_hosts) as again:
            return uname, (await again.run("cat outlived", check=True)).stdout
    uname, outlived = asyncio.run(scenario())
    assert uname.startswith("Linux ")
    assert outlived == "finished\n"


def test_asyncssh_refuses_an_unknown_host_key(ssh_host, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(_connect(ssh_host, empty))
