"""config.toml and resources.toml (repxd.user_config, lab-format §8–9): validation errors, the resource
merge order, and the memory / time parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from repxd.errors import ConfigError
from repxd.user_config import Resources, load_config, load_resources, parse_memory, parse_time

GIB = 1024**3
MIB = 1024**2

RESOURCES = """
[defaults]
time = "01:00:00"
mem = "4G"
cpus-per-task = 1
partition = "standard"

[[rules]]
job_id_glob = "*training*"
time = "12:00:00"
mem = "64G"
sbatch_opts = ["--gres=gpu:1"]

[[rules]]
job_id_glob = "*training-big*"
mem = "128G"

[[rules]]
job_id_glob = "*-partition-*"
[rules.worker_resources]
mem = "2G"
cpus-per-task = 2

[[rules]]
target = "cluster"
partition = "fast"
[rules.worker_resources]
mem = "3G"

[[rules]]
target = "cluster"
job_id_glob = "*training*"
sbatch_opts = ["--qos=long"]
"""


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user config dir and no ./resources.toml leak into the tests."""
    home = tmp_path / "xdg"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(load, *words: str) -> str:
    with pytest.raises(ConfigError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.fixture
def resources(tmp_path: Path) -> Resources:
    return load_resources(write(tmp_path / "resources.toml", RESOURCES))


# ---- unknown keys and bad values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[defaults]\nmemory = '4G'\n", "'defaults.memory'"),
        ("bogus = 1\n", "'bogus'"),
        ("[[rules]]\njob_id_glob = '*'\ncpus = 2\n", "'rules.0.cpus'"),
        ("[[rules]]\njob_id_glob = '*'\n[[rules]]\n[rules.worker_resources]\nram = '1G'\n",
         "'rules.1.worker_resources.ram'"),
    ],
)
def test_resources_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "res.toml", text)
    config_error(lambda: load_resources(path), str(path), "unknown key", key)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'dark'\n", "'colour'"),
        ("[targets.local]\nbase_path = '/x'\nbase = '/y'\n", "'targets.local.base'"),
        ("[targets.c]\nbase_path = '/x'\n[targets.c.slurm]\nexecution_type = ['bwrap']\n",
         "'targets.c.slurm.execution_type'"),
        ("[logging]\nmax_file = 3\n", "'logging.max_file'"),
    ],
)
def test_config_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "config.toml", text)
    config_error(lambda: load_config(path), str(path), "unknown key", key)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[defaults]\nmem = 'lots'\n", ["defaults.mem", "'lots' is not a memory size"]),
        ("[defaults]\ntime = '1h'\n", ["defaults.time", "'1h' is not a time limit"]),
        ("[defaults]\ncpus-per-task = 0\n", ["defaults.cpus-per-task"]),
        ("[[rules]]\nsbatch_opts = '--x'\n", ["rules.0.sbatch_opts"]),
        ("rules = 3\n", ["rules"]),
    ],
)
def test_resources_bad_value(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path / "res.toml", text)
    config_error(lambda: load_resources(path), str(path), *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[targets.local]\ndefault_scheduler = 'local'\n", ["targets.local.base_path", "required"]),
        ("[targets.c]\nbase_path = '/x'\ndefault_scheduler = 'pbs'\n", ["targets.c.default_scheduler"]),
        ("[targets.c]\nbase_path = '/x'\ndefault_execution_type = 'vm'\n", ["targets.c.default_execution_type"]),
        ("[targets.c]\nbase_path = '/x'\n[targets.c.local]\nlocal_concurrency = 0\n", ["local_concurrency"]),
    ],
)
def test_config_bad_value(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path / "config.toml", text)
    config_error(lambda: load_config(path), str(path), *words)


@pytest.mark.parametrize("text", ["[defaults\n", "mem = \n", "a = 1\na = 2\n", "x = 'unterminated\n"])
def test_bad_toml(tmp_path: Path, text: str) -> None:
    res = write(tmp_path / "res.toml", text)
    config_error(lambda: load_resources(res), str(res), "not valid TOML")
    cfg = write(tmp_path / "config.toml", text)
    config_error(lambda: load_config(cfg), str(cfg), "not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    config_error(lambda: load_config(tmp_path / "nope.toml"), "nope.toml", "cannot read")
    config_error(lambda: load_resources(tmp_path / "nope.toml"), "nope.toml", "cannot read")


def test_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", """
submission_target = "cluster"
[targets.local]
base_path = "/var/lib/repx/work"
default_scheduler = "local"
[targets.cluster]
address = "user@login.cluster.edu"
base_path = "/scratch/user/repx_work"
default_scheduler = "slurm"
node_local_path = "/tmp/user/repx"
default_execution_type = "bwrap"
[targets.cluster.slurm]
execution_types = ["bwrap", "native"]
[targets.cluster.local]
local_concurrency = 8
""")
    config = load_config(path)
    assert config.submission_target == "cluster"
    cluster = config.targets["cluster"]
    assert cluster.base_path == Path("/scratch/user/repx_work")
    assert cluster.default_scheduler == "slurm"
    assert cluster.execution_types("slurm") == ["bwrap", "native"]
    assert cluster.execution_types("local") == []
    assert cluster.local.local_concurrency == 8
    assert config.targets["local"].execution_types("slurm") == []


def test_config_default_location(isolated_config: Path) -> None:
    assert load_config().targets == {}
    write(isolated_config / "repx" / "config.toml", "[targets.here]\nbase_path = '/w'\n")
    assert list(load_config().targets) == ["here"]
    write(isolated_config / "repx" / "config.toml", "nonsense = true\n")
    config_error(load_config, str(isolated_config / "repx" / "config.toml"), "'nonsense'")


# ---- resources merge order --------------------------------------------------------------------


def test_defaults_only(resources: Resources) -> None:
    assert resources.for_job("1abc-produce-1.0", {}, None) == {
        "time": "01:00:00", "mem": "4G", "cpus-per-task": 1, "partition": "standard"}


def test_lab_hints_override_defaults_and_cpus_is_renamed(resources: Resources) -> None:
    hints = {"mem": "256M", "cpus": 3, "time": "00:02:00", "gpus": 1}
    merged = resources.for_job("1abc-produce-1.0", hints, None)
    assert merged == {"time": "00:02:00", "mem": "256M", "cpus-per-task": 3, "partition": "standard", "gpus": 1}
    assert "cpus" not in merged


def test_matching_rules_override_hints_last_match_wins(resources: Resources) -> None:
    hints = {"mem": "1G", "time": "00:05:00", "cpus": 4}
    merged = resources.for_job("0xyz-training-1.0", hints, None)
    assert merged == {"time": "12:00:00", "mem": "64G", "cpus-per-task": 4, "partition": "standard",
                      "sbatch_opts": ["--gres=gpu:1"]}
    # Both training rules match; the later one in the file wins for the keys it sets.
    big = resources.for_job("0xyz-training-big-1.0", hints, None)
    assert big["mem"] == "128G" and big["time"] == "12:00:00"


def test_rule_order_decides_not_specificity(tmp_path: Path) -> None:
    path = write(tmp_path / "res.toml", """
[[rules]]
job_id_glob = "*-exact-1.0"
mem = "1G"
[[rules]]
job_id_glob = "*"
mem = "2G"
""")
    assert load_resources(path).for_job("0a-exact-1.0", {}, None)["mem"] == "2G"


def test_sbatch_opts_replace_not_append(resources: Resources) -> None:
    hints = {"sbatch_opts": ["--exclusive"]}
    assert resources.for_job("0a-training-1.0", hints, None)["sbatch_opts"] == ["--gres=gpu:1"]
    assert resources.for_job("0a-training-1.0", hints, "cluster")["sbatch_opts"] == ["--qos=long"]
    assert resources.for_job("0a-other-1.0", hints, None)["sbatch_opts"] == ["--exclusive"]


def test_target_specific_rules(resources: Resources) -> None:
    assert resources.for_job("0a-produce-1.0", {}, None)["partition"] == "standard"
    assert resources.for_job("0a-produce-1.0", {}, "local")["partition"] == "standard"
    assert resources.for_job("0a-produce-1.0", {}, "cluster")["partition"] == "fast"
    assert resources.for_job("0a-produce-1.0", {"partition": "gpu"}, "cluster")["partition"] == "fast"


def test_glob_is_case_sensitive(resources: Resources) -> None:
    assert resources.for_job("0a-TRAINING-1.0", {}, None)["mem"] == "4G"


def test_worker_resources(resources: Resources) -> None:
    """Upstream resolve_worker_resources (repx-client resources.rs): the job's own resources, then
    the worker_resources of the LAST matching rule only."""
    job = resources.for_job("0a-partition-1.0", {}, None)
    assert resources.worker_for("0a-partition-1.0", {}, None) == {**job, "mem": "2G", "cpus-per-task": 2}
    # On "cluster" the last matching rule is the target rule (worker mem 3G): the earlier rule's
    # worker cpus (2) is not merged in, workers keep the job's 1 cpu.
    on_cluster = resources.for_job("0a-partition-1.0", {}, "cluster")
    assert on_cluster["cpus-per-task"] == 1
    assert resources.worker_for("0a-partition-1.0", {}, "cluster") == {**on_cluster, "mem": "3G"}
    # The last matching rule has no worker_resources: workers get the job's own resources.
    training = resources.for_job("0a-training-1.0", {}, "cluster")
    assert resources.worker_for("0a-training-1.0", {}, "cluster") == training
    assert resources.worker_for("0a-produce-1.0", {}, None) == resources.for_job("0a-produce-1.0", {}, None)
    # worker_resources never leak into the job's own resources.
    assert "worker_resources" not in on_cluster


def test_empty_resources() -> None:
    assert load_resources().for_job("0a-x-1.0", {"cpus": 2}, None) == {"cpus-per-task": 2}
    assert Resources().worker_for("0a-x-1.0", {}, None) == {}


def test_resource_files_merge_in_order(tmp_path: Path, isolated_config: Path) -> None:
    """Upstream load_resources (repx-core config.rs) merges the TOML values with merge_toml_values:
    tables key by key, anything else replaced — so a later file's [[rules]] replaces the earlier
    array instead of adding to it."""
    write(isolated_config / "repx" / "resources.toml", """
[defaults]
mem = "1G"
time = "00:10:00"
partition = "user"
[[rules]]
job_id_glob = "*"
sbatch_opts = ["--from-user"]
[[rules]]
job_id_glob = "*user-only*"
mem = "9G"
""")
    write(Path("resources.toml"), """
[defaults]
mem = "2G"
[[rules]]
job_id_glob = "*"
sbatch_opts = ["--from-cwd"]
""")
    extra = write(tmp_path / "extra.toml", """
[defaults]
time = "00:30:00"
""")
    merged = load_resources(extra)
    # Defaults merge key by key; later files win for the keys they set.
    assert merged.defaults.values() == {"mem": "2G", "time": "00:30:00", "partition": "user"}
    # ./resources.toml's rules replaced the user's; extra.toml has none, so they stay.
    assert len(merged.rules) == 1
    assert merged.for_job("0a-user-only-1.0", {}, None) == {
        "mem": "2G", "time": "00:30:00", "partition": "user", "sbatch_opts": ["--from-cwd"]}
    write(extra, '[[rules]]\njob_id_glob = "*special*"\nsbatch_opts = ["--from-extra"]\n')
    merged = load_resources(extra)
    assert merged.for_job("0a-x-1.0", {}, None) == {"mem": "2G", "time": "00:10:00", "partition": "user"}
    assert merged.for_job("0a-special-1.0", {}, None)["sbatch_opts"] == ["--from-extra"]


def test_unknown_key_in_user_resources_names_that_file(isolated_config: Path) -> None:
    path = write(isolated_config / "repx" / "resources.toml", "[defaults]\nmemory = '1G'\n")
    config_error(load_resources, str(path), "'defaults.memory'")
    path.unlink()
    write(Path("resources.toml"), "[defaults]\ncpu = 1\n")
    config_error(load_resources, "resources.toml", "'defaults.cpu'")


# ---- parsers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256M", 256 * MIB), ("4G", 4 * GIB), ("4g", 4 * GIB), ("1.5GiB", int(1.5 * GIB)),
        ("512K", 512 * 1024), ("2T", 2 * 1024 * GIB), ("100", 100), ("100B", 100), ("64MB", 64 * MIB),
        (" 8G ", 8 * GIB), ("0", 0), (1024, 1024),
    ],
)
def test_parse_memory(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "4X", "-1G", "G", "4 G B", "1e3M", "4GiBB"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", 0), ("01:00:00", 3600), ("12:34:56", 12 * 3600 + 34 * 60 + 56), ("05:30", 330),
        ("1-00:00:00", 86400), ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5), ("100:00:00", 360000),
        (" 00:01:00 ", 60),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "1h", "60", "1:2:3:4", "01:00:xx", "-01:00:00", "1-"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a time limit"):
        parse_time(text)
