"""config.toml and resources.toml rules that follow upstream RepX: each test names the upstream
file and function it mirrors and states what upstream does next to the assertion on ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from repxd.engine.embedded import resolve_target
from repxd.errors import ConfigError
from repxd.exec.runtimes import choose_execution_type
from repxd.service.daemon_config import Settings
from repxd.user_config import load_config, load_resources, wildmatch


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def config_from(tmp_path: Path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def one_line_error(action, *words: str) -> str:
    with pytest.raises(ConfigError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_default_scheduler_falls_back_to_top_level_then_slurm(tmp_path: Path) -> None:
    """Upstream repx-runner lib.rs: `target.default_scheduler.or(config.default_scheduler)
    .unwrap_or(SchedulerType::Slurm)`."""
    config = config_from(tmp_path, 'default_scheduler = "local"\n'
                                   '[targets.a]\nbase_path = "/a"\n'
                                   '[targets.b]\nbase_path = "/b"\ndefault_scheduler = "slurm"\n')
    assert config.scheduler_of(config.targets["a"]) == "local"  # from the top level
    assert config.scheduler_of(config.targets["b"]) == "slurm"  # its own wins
    # resolve_target settles it once: what it returns carries the scheduler that applies.
    assert resolve_target(config, "a")[1].default_scheduler == "local"
    assert resolve_target(config, "b")[1].default_scheduler == "slurm"
    bare = config_from(tmp_path, '[targets.a]\nbase_path = "/a"\n')
    assert bare.scheduler_of(bare.targets["a"]) == "slurm"  # upstream's last resort
    assert resolve_target(bare, "a")[1].default_scheduler == "slurm"


def test_relative_base_path_is_rejected_for_local_targets(tmp_path: Path) -> None:
    """Upstream repx-core config.rs load_config: `~` is expanded; a target without `address` whose
    base_path is not absolute is an InvalidConfig error. With an address, relative is allowed."""
    one_line_error(lambda: config_from(tmp_path, '[targets.a]\nbase_path = "work/x"\n'),
                   "config.toml", "targets.a", "'work/x' is relative", "absolute")
    home = config_from(tmp_path, '[targets.a]\nbase_path = "~/store"\nnode_local_path = "~/local"\n')
    assert home.targets["a"].base_path == Path.home() / "store"
    assert home.targets["a"].node_local_path == Path.home() / "local"
    remote = config_from(tmp_path, '[targets.c]\naddress = "login"\nbase_path = "scratch/x"\n')
    assert remote.targets["c"].base_path == Path("scratch/x")


def test_remote_only_settings_are_refused_not_ignored(tmp_path: Path) -> None:
    """Upstream uses `address`, the slurm scheduler and `artifact_store = "node-local"` to run on
    cluster nodes (repx-client client.rs). This version runs SSH targets with their local
    scheduler or their SLURM, and no node-local store: the rest (an SSH host's Grid Engine, too)
    is refused with a sentence when the target is used, never silently run locally."""
    config = config_from(tmp_path, 'default_scheduler = "local"\n'
                                   '[targets.ssh]\naddress = "login"\nbase_path = "/s"\n'
                                   '[targets.ssh_slurm]\naddress = "login"\nbase_path = "/s"\ndefault_scheduler = "slurm"\n'
                                   '[targets.ssh_sge]\naddress = "login"\nbase_path = "/s"\ndefault_scheduler = "sge"\n'
                                   '[targets.nodes]\nbase_path = "/n"\nartifact_store = "node-local"\n'
                                   '[targets.shared]\nbase_path = "/n"\nartifact_store = "shared"\n')
    assert resolve_target(config, "ssh")[0] == "ssh"
    assert resolve_target(config, "ssh_slurm")[1].default_scheduler == "slurm"
    one_line_error(lambda: resolve_target(config, "ssh_sge"), "'ssh_sge'", "sge", 'default_scheduler = "local" or "slurm"')
    one_line_error(lambda: resolve_target(config, "nodes"), "artifact_store", "node-local", "cannot run yet")
    assert resolve_target(config, "shared")[0] == "shared"
    one_line_error(lambda: config_from(tmp_path, '[targets.a]\nbase_path = "/a"\nartifact_store = "nfs"\n'),
                   "targets.a.artifact_store")


@pytest.mark.parametrize(("pattern", "job_id", "matches"), [
    ("*-heavy-*", "1ab-heavy-1.0", True),
    ("1ab-?-1.0", "1ab-x-1.0", True),
    ("*", "runs/1ab-x", True),            # `*` crosses `/`
    ("[ab]*", "a-job", False),            # no character classes: `[` is literal ...
    ("[ab]*", "[ab]-job", True),          # ... and matches itself
    ("*Train*", "0a-train-1.0", False),   # case-sensitive
    ("1ab", "1ab-x", False),              # the whole id must match
    ("*a*b", "xaxbxab", True),
])
def test_job_id_glob_is_wildmatch(pattern: str, job_id: str, matches: bool) -> None:
    """Upstream repx-client resources.rs matches job_id_glob with `WildMatch::new(glob).matches(id)`
    (wildmatch 2.6): only `*` and `?` are special. fnmatch would treat `[ab]` as a class."""
    assert wildmatch(pattern, job_id) is matches


def test_sources_of_merged_resources(isolated: Path) -> None:
    """What `show job --resources` prints: upstream's order (defaults, then the Lab's hints, then
    every matching rule; resources.rs resolve_for_job) with where each value came from."""
    user = isolated / "xdg" / "repx" / "resources.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[defaults]\nmem = "1G"\ntime = "00:10:00"\n[[rules]]\njob_id_glob = "*"\nmem = "5G"\n')
    cwd = Path("resources.toml").resolve()
    cwd.write_text('[defaults]\ntime = "00:20:00"\n[[rules]]\njob_id_glob = "nomatch"\n'
                   '[[rules]]\njob_id_glob = "*-fit-*"\npartition = "big"\n')
    explained = load_resources().explain("1ab-fit-1.0", {"cpus": 4, "mem": "2G"}, None)
    assert explained == {
        "mem": ("2G", "lab hint"),  # the user's rule 1 was replaced by ./resources.toml's rules
        "time": ("00:20:00", f"default ({cwd})"),
        "cpus-per-task": (4, "lab hint"),
        "partition": ("big", f"rule 2 of {cwd}"),
    }


def test_daemon_targets_keep_their_execution_type_without_a_local_section(tmp_path: Path) -> None:
    """Upstream's CLI (client.rs resolve_execution_type) runs natively when a target has no
    `local` section, whatever default_execution_type says; repxctl does the same. The daemon's
    repxd.toml (ours, not upstream's) documents default_execution_type alone as enough, so there it
    is honoured: an admin's sandbox is never dropped silently."""
    text = 'default_scheduler = "local"\n[targets.box]\nbase_path = "/b"\ndefault_execution_type = "bwrap"\n'
    cli_target = config_from(tmp_path, text).targets["box"]
    assert choose_execution_type(cli_target, None, has_image=True) == "native"
    daemon = Settings(targets={"box": cli_target}).target_config()
    assert choose_execution_type(resolve_target(daemon, "box")[1], None, has_image=True) == "bwrap"
    assert daemon.scheduler_of(daemon.targets["box"]) == "local"


def test_step_hints_sit_between_the_job_and_the_worker_overlay():
    """Upstream's resources.rs resolve_worker_resources: the job's directives, then the step's
    Nix hints (merge_hints), then the last matching rule's worker_resources (merge_rule)."""
    from repxd.user_config import Resources

    resources = Resources.model_validate({"defaults": {"mem": "1G", "time": "00:10:00"},
                                          "rules": [{"job_id_glob": "*", "worker_resources": {"mem": "2G"}}]})
    step = resources.worker_for("0a-x-1.0", {"cpus": 2}, None, step_hints={"mem": "512M", "cpus": 4, "time": "00:01:00"})
    assert step == {"mem": "2G", "time": "00:01:00", "cpus-per-task": 4}
