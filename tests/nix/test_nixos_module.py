"""services.repx evaluated with nixpkgs' real lib and module system (NIXPKGS_LIB) against
declarations of the NixOS options it sets (tests/nix/stub.nix; pkgs there is a fake): role
combinations, the settings file, types, assertions and warnings."""

from __future__ import annotations

import pytest
from nixeval import module_error, module_report

from repxd.service.daemon_config import Settings

CHECKED = "repxd-checked.toml"
ROLES = ("repx-api", "repx-scheduler", "repx-agent")


def repx(body: str) -> str:
    """A configuration module enabling repx with `body` inside services.repx."""
    return f"{{ config, lib, ... }}: {{ services.repx = {{ enable = true; {body} }}; }}"


def accepted_by_repxd(settings: dict) -> Settings:
    """The generated repxd.toml content is valid for repxd itself (what check-config runs)."""
    return Settings.model_validate(settings)


def test_all_roles_by_default():
    r = module_report(repx(""))
    assert r["failedAssertions"] == [] and r["warnings"] == []
    assert r["packages"] == ["repx-0.1.0"] and r["systemPackages"] == ["repx-0.1.0"]
    assert r["targets"]["repx"]["wantedBy"] == ["multi-user.target"]
    for unit in ROLES:
        service = r["services"][unit]
        assert service["enable"] and service["wantedBy"] == ["repx.target"], (unit, service)
        assert service["restartTriggers"] == [CHECKED]
        assert service["serviceConfig"]["User"] == "repx" and service["serviceConfig"]["WatchdogSec"] == "30s"
        assert "ExecStart" not in service["serviceConfig"], "the package's ExecStart= is kept"
    assert r["configFile"]["name"] == CHECKED and r["configFile"]["checkedWith"] == ["repx-0.1.0"]
    assert 'repxd check-config "$raw"' in r["configFile"]["checkScript"]
    s = r["settings"]
    assert s["state_dir"] == "/var/lib/repx" and s["log_level"] == "info"
    assert s["api"]["socket"] == "/run/repx/api.sock" and "tcp" not in s["api"]
    assert s["scheduler"]["metrics"] == "127.0.0.1:9421" and s["agent"]["metrics"] == "127.0.0.1:9422"
    assert s["targets"] == {"local": {"base_path": "/var/lib/repx/work"}}
    accepted_by_repxd(s)
    assert r["users"]["repx"]["isSystemUser"] and r["users"]["repx"]["home"] == "/var/lib/repx"
    assert "repx" in r["groups"]
    assert r["polkit"]["enable"] and r["polkitRules"].endswith("/share/repx/polkit/60-repx.rules")
    assert r["firewallPorts"] == []
    # NixOS renders every module's meta.doc into its manual and rejects headings without ids.
    assert r["docs"] == []


def test_agent_only_node():
    r = module_report(repx('''
        api.enable = false; scheduler.enable = false;
        settings.agent.api = "http://head:8420";
        credentials.agent-token = "/run/secrets/repx-agent-token";'''))
    assert r["failedAssertions"] == []
    assert not r["services"]["repx-api"]["enable"] and not r["services"]["repx-scheduler"]["enable"], "masked"
    agent = r["services"]["repx-agent"]
    assert agent["enable"] and agent["wantedBy"] == ["repx.target"]
    assert agent["serviceConfig"]["LoadCredential"] == ["agent-token:/run/secrets/repx-agent-token"]
    assert "network-online.target" in agent["after"] and "network-online.target" in agent["wants"]
    s = r["settings"]
    assert s["agent"]["api"] == "http://head:8420"
    assert s["agent"]["token_file"] == "/run/credentials/repx-agent.service/agent-token"
    assert "agent_token_file" not in s["api"], "no API here, so no API token file"
    accepted_by_repxd(s)
    assert [c["labels"]["role"] for c in r["scrapeConfigs"][0]["static_configs"]] == ["agent"]
    assert r["polkit"]["enable"]


def test_api_and_scheduler_node():
    r = module_report(repx('''
        agent.enable = false;
        settings.api.tcp = "0.0.0.0:8420";
        openFirewall = true;
        credentials = { agent-token = "/run/secrets/agent"; admin-token = "/run/secrets/admin"; };
        metrics = { listenAddress = "0.0.0.0"; openFirewall = true; };
      }; networking.hostName = "head"; services.repx = {'''))
    assert r["failedAssertions"] == []
    assert not r["services"]["repx-agent"]["enable"]
    assert r["services"]["repx-api"]["enable"] and r["services"]["repx-scheduler"]["enable"]
    assert sorted(r["firewallPorts"]) == [8420, 9421]
    api = r["services"]["repx-api"]["serviceConfig"]
    assert api["IPAddressAllow"] == ["any"], "remote agents must get past the unit's loopback-only rule"
    assert r["services"]["repx-scheduler"]["serviceConfig"]["IPAddressAllow"] == ["any"]
    assert sorted(api["LoadCredential"]) == ["admin-token:/run/secrets/admin", "agent-token:/run/secrets/agent"]
    s = r["settings"]
    assert s["api"]["tcp"] == "0.0.0.0:8420"
    assert s["api"]["agent_token_file"] == "/run/credentials/repx-api.service/agent-token"
    assert s["api"]["admin_token_file"] == "/run/credentials/repx-api.service/admin-token"
    assert s["scheduler"]["metrics"] == "0.0.0.0:9421"
    accepted_by_repxd(s)
    (scrape,) = r["scrapeConfigs"]  # the API's /metrics needs a token here, and none is given for it
    assert scrape["job_name"] == "repx-head"
    assert {c["labels"]["role"]: c["targets"] for c in scrape["static_configs"]} == {"scheduler": ["head:9421"]}
    assert not r["polkit"]["enable"] and r["polkitRules"] is None, "no agent, no polkit rule"
    plain_http, no_metrics_token = sorted(r["warnings"], key=lambda w: "metrics-token" in w)
    assert "plain HTTP" in plain_http and "services.repx.credentials.metrics-token" in no_metrics_token


def test_api_with_tokens_is_scraped_with_the_metrics_token():
    r = module_report(repx('''
        settings.api.tcp = "0.0.0.0:8420";
        credentials = { admin-token = "/run/secrets/admin"; metrics-token = "/run/secrets/metrics"; };
      }; networking.hostName = "head"; services.repx = {'''))
    assert r["failedAssertions"] == []
    s = r["settings"]
    assert s["api"]["metrics_token_file"] == "/run/credentials/repx-api.service/metrics-token"
    accepted_by_repxd(s)
    local, api = r["scrapeConfigs"]
    assert "api" not in [c["labels"]["role"] for c in local["static_configs"]]
    assert api["job_name"] == "repx-head-api" and api["authorization"] == {"credentials_file": "/run/secrets/metrics"}
    assert api["static_configs"] == [{"targets": ["head:8420"], "labels": {"role": "api"}}]
    assert not any("metrics-token" in w for w in r["warnings"])


def test_tcp_api_without_tokens_warns():
    r = module_report(repx('settings.api.tcp = "127.0.0.1:8420";'))
    assert r["failedAssertions"] == []
    (warning,) = r["warnings"]
    assert "services.repx.settings.api.tcp" in warning and "no token" in warning
    assert "services.repx.credentials.agent-token" in warning


@pytest.mark.parametrize(("body", "expected"), [
    ("metrics.port = 70000;", ["services.repx.metrics.port", "16 bit unsigned integer", "70000"]),
    ('gpu.backend = "opencl";', ["services.repx.gpu.backend", '"auto", "cuda", "rocm", "none"', "opencl"]),
    ('settings.api.tcp = "0.0.0.0:99999";', ["services.repx.settings.api.tcp", "port from 1 to 65535"]),
    ('settings.api.tcp = "8420";', ["services.repx.settings.api.tcp", "host:port"]),
    ("credentials.ssh-key = ./stub.nix;", ["services.repx.credentials.ssh-key", "outside the Nix store"]),
    ('credentials.token = "/nix/store/0000-token";', ["services.repx.credentials.token", "outside the Nix store"]),
    ('jobs.defaultLimits.mem = "lots";', ["services.repx.jobs.defaultLimits.mem", "memory size"]),
    ('logLevel = "verbose";', ["services.repx.logLevel", '"debug", "info", "warning", "error"']),
    ('settings.targets.local.default_execution_type = "k8s";', ["default_execution_type", '"native"']),
    ('settings.state_dir = "/elsewhere";', ["services.repx.settings.state_dir", "read-only"]),
], ids=["port", "gpu-backend", "tcp-port", "tcp-host", "path-literal", "store-path", "mem", "log-level",
        "execution-type", "state-dir"])
def test_bad_values_are_rejected_with_the_option_and_the_type(body, expected):
    error = module_error(repx(body))
    for text in expected:
        assert text in error, f"{text!r} not in:\n{error}"
    assert len(error) < 3000, "one readable message, not a trace"


@pytest.mark.parametrize(("body", "expected"), [
    ('gpu.backend = "cuda";', ['services.repx.gpu.backend = "cuda"', 'services.xserver.videoDrivers = [ "nvidia" ]']),
    ('openFirewall = true; settings.api.tcp = "127.0.0.1:8420";',
     ["services.repx.openFirewall", "loopback only (127.0.0.1:8420)", 'settings.api.tcp = "0.0.0.0:8420"']),
    ("openFirewall = true;", ["services.repx.openFirewall", "has no TCP listener"]),
    ("metrics.openFirewall = true;", ["services.repx.metrics.openFirewall", 'metrics.listenAddress = "0.0.0.0"']),
    ("api.enable = false; scheduler.enable = false;", ["settings.agent.api", "credentials.agent-token"]),
    ('api.enable = false; settings.agent.api = "http://head:8420";', ["is an URL", "credentials.agent-token"]),
    ("api.enable = false; scheduler.enable = false; agent.enable = false;", ["enable at least one role"]),
    ('gpu.devices = [ "/dev/nvidia0" ];', ["services.repx.gpu.devices", 'set it to "cuda" or "rocm"']),
    ("metrics.port = 65535;", ["services.repx.metrics.port = 65535", "below 65535"]),
], ids=["cuda-without-driver", "firewall-loopback", "firewall-no-tcp", "metrics-firewall-loopback",
        "agent-without-api", "agent-url-without-token", "no-role", "devices-without-backend", "metrics-port"])
def test_assertions_name_the_option_and_the_fix(body, expected):
    failed = module_report(repx(body), attr="failedAssertions")
    assert len(failed) == 1, failed
    for text in expected:
        assert text in failed[0], f"{text!r} not in:\n{failed[0]}"


def test_cuda_with_the_driver_opens_the_nvidia_devices():
    r = module_report(repx('gpu.backend = "cuda";') + " // { hardware.nvidia.enabled = true; }")
    assert r["failedAssertions"] == []
    sc = r["services"]["repx-agent"]["serviceConfig"]
    assert sc["DeviceAllow"] == ["char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidiactl rw"]
    assert sc["PrivateDevices"] is False and sc["DevicePolicy"] == "closed"
    assert sc["SupplementaryGroups"] == ["render", "video"]
    assert r["settings"]["agent"]["labels"] == {"gpu": "cuda"}
    assert "DeviceAllow" not in r["services"]["repx-api"]["serviceConfig"]


def test_gpu_devices_restrict_to_those_nodes():
    r = module_report(repx('gpu = { backend = "rocm"; devices = [ "/dev/dri/renderD128" ]; };'))
    assert r["services"]["repx-agent"]["serviceConfig"]["DeviceAllow"] == ["/dev/dri/renderD128 rw", "/dev/kfd rw"]
    auto = module_report(repx('gpu.backend = "auto";'))["services"]["repx-agent"]["serviceConfig"]["DeviceAllow"]
    assert auto == [f"char-{g} rw" for g in ("nvidia-frontend", "nvidia-uvm", "nvidiactl", "drm", "kfd")]


def test_custom_user_state_dir_and_targets():
    r = module_report(repx('''
        user = "lab"; group = "lab"; stateDir = "/srv/repx";
        settings.targets.scratch = { base_path = "/scratch/repx"; default_execution_type = "bwrap"; };'''))
    assert r["users"] == {} and "repx" not in r["groups"], "a custom user is the administrator's to define"
    agent = r["services"]["repx-agent"]["serviceConfig"]
    assert agent["User"] == "lab" and agent["Group"] == "lab"
    assert sorted(agent["ReadWritePaths"]) == ["-/scratch/repx", "/srv/repx"]
    assert r["services"]["repx-api"]["serviceConfig"]["ReadWritePaths"] == ["/srv/repx"]
    assert r["tmpfiles"] == ["d /srv/repx 0755 lab lab -", "d /scratch/repx 0755 lab lab -"]
    assert r["settings"]["state_dir"] == "/srv/repx"
    assert r["settings"]["targets"] == {"scratch": {"base_path": "/scratch/repx", "default_execution_type": "bwrap"}}
    accepted_by_repxd(r["settings"])
    assert 'subject.user != "lab"' in r["polkitRules"]["fakeScript"]


def test_remote_targets_stay_off_this_host():
    r = module_report(repx(
        'settings.targets.hpc = { address = "login.hpc"; base_path = "/scratch/repx"; default_scheduler = "slurm"; };'))
    assert r["settings"]["targets"]["hpc"] == {"address": "login.hpc", "base_path": "/scratch/repx",
                                               "default_scheduler": "slurm"}
    accepted_by_repxd(r["settings"])
    assert r["tmpfiles"] == [] and r["services"]["repx-agent"]["serviceConfig"]["ReadWritePaths"] == []
    error = module_error(repx('settings.targets.hpc.address = "login.hpc";'))
    assert "services.repx.settings.targets.hpc.base_path is not set" in error


def test_limits_slice_watchdog_environment_and_extra_args():
    r = module_report(repx('''
        jobs.defaultLimits = { mem = "2G"; cpus = 2; time = "04:00:00"; };
        jobs.slice = { MemoryMax = "90%"; CPUWeight = 50; };
        watchdogSec = 0; logLevel = "debug";
        environmentFile = "/run/secrets/repx.env";
        extraArgs = [ "--label" "50%" "a b" ];
        settings.scheduler.lease_seconds = 30;
        settings.agent.launcher = "systemd";'''))
    s = r["settings"]
    assert s["resources"]["defaults"] == {"mem": "2G", "cpus-per-task": 2, "time": "04:00:00"}
    assert s["log_level"] == "debug" and s["scheduler"]["lease_seconds"] == 30
    accepted_by_repxd(s)
    assert r["slices"]["repx-jobs"]["sliceConfig"] == {"MemoryMax": "90%", "CPUWeight": 50}
    api = r["services"]["repx-api"]["serviceConfig"]
    assert api["WatchdogSec"] == "0" and api["EnvironmentFile"] == "/run/secrets/repx.env"
    empty, command = api["ExecStart"]
    assert empty == "", "ExecStart= is reset before the new command line"
    assert command.endswith("/bin/repxd api --config /etc/repx/repxd.toml --label 50%% 'a b'"), command


def test_metrics_off_and_socket_elsewhere():
    r = module_report(repx('metrics.enable = false; settings.api.socket = "/run/repx/other.sock";'))
    s = r["settings"]
    assert s["scheduler"]["metrics"] == "" and s["agent"]["metrics"] == "", "an empty listener turns metrics off"
    accepted_by_repxd(s)
    assert r["scrapeConfigs"] == []
    assert r["variables"] == {"REPX_API": "/run/repx/other.sock"}


def test_scrape_configs_feed_services_prometheus():
    r = module_report("{ config, ... }: { services.repx.enable = true; "
                      "services.prometheus.scrapeConfigs = config.services.repx.metrics.scrapeConfigs; }")
    assert r["prometheusScrapeConfigs"] == r["scrapeConfigs"] != []


def test_disabled_module_sets_nothing():
    r = module_report("{ services.repx.gpu.backend = \"cuda\"; services.repx.openFirewall = true; }")
    assert r["failedAssertions"] == [] and r["services"] == {} and r["packages"] == []
    assert r["settings"] is None and r["users"] == {}


def test_each_role_gets_only_its_own_credentials():
    """The scheduler and agent never receive the admin token (every credential used to reach
    every role); names the module does not know go to every role."""
    r = module_report(repx('''
        settings.api.tcp = "127.0.0.1:8420";
        credentials = { agent-token = "/s/agent"; admin-token = "/s/admin"; metrics-token = "/s/metrics";
                        ssh-key = "/s/ssh"; };'''))
    loaded = {unit: sorted(c.split(":")[0] for c in r["services"][unit]["serviceConfig"].get("LoadCredential", []))
              for unit in ROLES}
    assert loaded == {"repx-api": ["admin-token", "agent-token", "metrics-token", "ssh-key"],
                      "repx-scheduler": ["ssh-key"],
                      "repx-agent": ["agent-token", "ssh-key"]}


def test_hardware_detection_runs_as_the_configured_user():
    """repx-hwdetect.service (wanted by repx.target) names the default user in the package's
    unit; with a custom user that user must be named here, or the unit fails (217/USER)."""
    r = module_report(repx('user = "lab"; group = "lab";'))
    hwdetect = r["services"]["repx-hwdetect"]["serviceConfig"]
    assert (hwdetect["User"], hwdetect["Group"]) == ("lab", "lab")
    assert not any(r["services"][unit]["serviceConfig"].get("User") not in (None, "lab")
                   for unit in (*ROLES, "repx-hwdetect"))


def test_the_agent_finds_the_sandboxes_it_runs_by_name():
    """NixOS units get only coreutils, findutils, grep, sed and systemd on PATH; the agent looks up
    bwrap, podman and docker by name. bubblewrap is always there; podman/docker where a target
    uses them."""
    plain = module_report(repx(""))
    assert plain["services"]["repx-agent"]["path"] == ["bubblewrap"]
    podman = module_report(repx('''settings.targets.local = { base_path = "/srv/w"; default_execution_type = "podman";
                                    local.execution_types = [ "podman" "docker" ]; };'''))
    assert sorted(podman["services"]["repx-agent"]["path"]) == ["bubblewrap", "docker", "podman"]


def test_the_polkit_rule_is_active_once():
    """NixOS links every system package's share/polkit-1 into the active rules, so a rule shipped
    there and also placed in /etc by the module was active twice — and with a custom user the
    stock rule for `repx` stayed active beside the edited one. The package keeps it elsewhere."""
    from nixeval import ROOT

    package = (ROOT / "nixos" / "package.nix").read_text()
    installs = [line for line in package.splitlines() if line.strip().startswith("install ")]
    assert installs and not any("share/polkit-1" in line for line in installs)
    custom = module_report(repx('user = "lab"; group = "lab";'))
    assert 'subject.user != "lab"' in custom["polkitRules"]["fakeScript"]
    assert "/share/repx/polkit/60-repx.rules" in custom["polkitRules"]["fakeScript"]


def test_check_config_is_skipped_where_the_build_machine_cannot_run_the_hosts_package():
    """checkConfig runs the host's repxd at build time; cross-building (aarch64 host on x86_64)
    it cannot run, so the file goes unchecked rather than the build failing."""
    from nixeval import HERE, evaluate

    native = module_report(repx(""))
    assert native["configFile"]["name"] == CHECKED
    cross = evaluate(HERE / "eval.nix", "report", configuration=repx(""), cross="true")
    assert cross["configFile"]["name"] == "repxd.toml" and cross["configFile"]["checkScript"] is None


def test_a_stable_uid_and_gid_for_hosts_sharing_outputs():
    """Outputs on a shared base path need the service user to be the same number on every host:
    services.repx.uid/gid set it on the user and group the roles run as; unset, NixOS picks."""
    dynamic = module_report(repx(""))
    assert "uid" not in dynamic["users"]["repx"] and dynamic["groupIds"]["repx"] is None
    stable = module_report(repx("uid = 3850; gid = 3851;"))
    assert stable["users"]["repx"]["uid"] == 3850 and stable["groupIds"]["repx"] == 3851
    assert stable["users"]["repx"]["isSystemUser"] is True and stable["failedAssertions"] == []
    custom = module_report('{ services.repx = { enable = true; user = "lab"; group = "lab"; uid = 3850; gid = 3851; };'
                           ' users.users.lab = { isSystemUser = true; group = "lab"; }; users.groups.lab = { }; }')
    assert custom["users"]["lab"]["uid"] == 3850 and custom["groupIds"]["lab"] == 3851
    assert "repx" not in custom["users"]


def test_a_uid_or_gid_nixpkgs_already_reserves_is_refused():
    """nixpkgs' static ids (config.ids, which no module outside nixpkgs may extend) are checked."""
    nixos_ids = " ids.uids = { slurm = 307; nobody = 65534; }; ids.gids = { slurm = 307; wheel = 1; };"
    failed = module_report(f"{{ services.repx = {{ enable = true; uid = 307; gid = 1; }};{nixos_ids} }}",
                           attr="failedAssertions")
    assert any("services.repx.uid = 307 is already nixpkgs' static id config.ids.uids.slurm" in m for m in failed), failed
    assert any("services.repx.gid = 1 is already nixpkgs' static id config.ids.gids.wheel" in m for m in failed), failed
    free = module_report(f"{{ services.repx = {{ enable = true; uid = 3850; gid = 3850; }};{nixos_ids} }}",
                         attr="failedAssertions")
    assert free == []
