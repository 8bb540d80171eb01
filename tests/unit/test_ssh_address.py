"""An SSH target's address and `[targets.X.ssh]` as config.toml gives them."""

from __future__ import annotations

import pytest

from repxd.errors import ConfigError
from repxd.targets.ssh.connection import Destination, remote_path
from repxd.user_config import TargetConfig


@pytest.mark.parametrize("address,parsed", [
    ("alice@login.example.org", Destination("login.example.org", "alice", None)),
    ("alice@login.example.org:2222", Destination("login.example.org", "alice", 2222)),
    ("cluster", Destination("cluster", None, None)),
    ("bob@[fd00::5]:22", Destination("fd00::5", "bob", 22)),
])
def test_address_forms(address, parsed):
    assert Destination.parse(address) == parsed


def test_bad_port_is_one_line():
    with pytest.raises(ConfigError, match=r"^address 'a@h:ssh' is not user@host\[:port\]"):
        Destination.parse("a@h:ssh")


def test_remote_base_path_keeps_its_tilde_for_the_remote_home():
    target = TargetConfig(address="a@h", base_path="~/repx", ssh={"trust_on_first_use": True})
    assert str(target.base_path) == "~/repx" and remote_path(target.base_path) == "repx"
    assert target.ssh.trust_on_first_use and target.ssh.known_hosts is None
    assert TargetConfig(base_path="~/repx").base_path.is_absolute()  # local: our home


def test_unknown_ssh_key_is_refused():
    with pytest.raises(ValueError, match="identity"):
        TargetConfig(address="a@h", base_path="/b", ssh={"identity": "/k"})
