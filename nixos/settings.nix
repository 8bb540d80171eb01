# The `services.repx.settings` submodule: repxd.toml (RFC 42). Keys keep repxd's spelling
# (snake_case, `cpus-per-task`); every key repxd knows may be set, and the common ones are
# typed here so that a mistake fails at evaluation instead of at the daemon's start.
{
  lib,
  settingsFormat,
  stateDir,
}:
let
  inherit (lib) mkOption types literalExpression;
  repxLib = import ./lib.nix { inherit lib; };
  inherit (repxLib) listenerType memoryType timeType;

  freeform = options: types.submodule {
    freeformType = settingsFormat.type;
    inherit options;
  };

  nullOption = type: description: mkOption {
    type = types.nullOr type;
    default = null;
    inherit description;
  };

  setByModule = option: mkOption {
    type = types.str;
    readOnly = true;
    description = "Set from {option}`services.repx.${option}`; do not set it here.";
  };

  resourceRule = freeform {
    job_id_glob = nullOption types.str "Jobs this rule applies to (a glob over job ids); unset: every job.";
    target = nullOption types.str "The target this rule applies to; unset: every target.";
    mem = nullOption memoryType "Memory per job.";
    "cpus-per-task" = nullOption types.ints.positive "CPUs per job.";
    time = nullOption timeType "Time limit per job.";
    gpus = nullOption types.ints.unsigned "GPUs per job.";
  };
in
freeform {
  state_dir = setByModule "stateDir";
  log_level = setByModule "logLevel";

  api = mkOption {
    default = { };
    description = "The API role: its listeners and who may do what.";
    type = freeform {
      socket = mkOption {
        type = types.str;
        default = "/run/repx/api.sock";
        description = ''
          The Unix socket; callers are identified by their peer credentials. It must stay under
          /run/repx (the units' RuntimeDirectory), where repxctl looks first.
        '';
      };
      tcp = mkOption {
        type = types.nullOr listenerType;
        default = null;
        example = "0.0.0.0:8420";
        description = ''
          An optional TCP listener (plain HTTP) for agents on other hosts and remote clients.
          Every request on it needs a bearer token except /metrics and /v1/health; see
          {option}`services.repx.credentials`.
        '';
      };
      allowed_groups = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "repx" ];
        description = "Groups whose members may submit runs on the socket; empty: every local user.";
      };
      admin_groups = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "wheel" ];
        description = "Groups whose members may act on every run and on agents.";
      };
      agent_token_file = nullOption types.str ''
        File with the token agents present over TCP. Set for you when
        {option}`services.repx.credentials` has `agent-token`.
      '';
      admin_token_file = nullOption types.str ''
        File with the administrators' token for TCP. Set for you when
        {option}`services.repx.credentials` has `admin-token`.
      '';
    };
  };

  scheduler = mkOption {
    default = { };
    description = "The scheduler role (lease_seconds, max_lost, job_retries, ...).";
    type = freeform {
      metrics = setByModule "metrics";
    };
  };

  agent = mkOption {
    default = { };
    description = "The agent role: where its API is and how much it may run at once.";
    type = freeform {
      metrics = setByModule "metrics";
      id = nullOption types.str "The agent's name; unset: the host name.";
      api = nullOption types.str ''
        The API this agent serves: a socket path or an URL such as `http://server:8420`;
        unset: the local socket. Agent-only hosts must set it.
      '';
      token_file = nullOption types.str ''
        File with the agent token, for an `http://` API. Set for you when
        {option}`services.repx.credentials` has `agent-token`.
      '';
      slots = nullOption types.ints.positive "Jobs at once; unset: the CPU count.";
      cpus = nullOption types.ints.positive "CPUs offered to jobs; unset: all.";
      mem = nullOption memoryType "Memory offered to jobs; unset: all.";
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          rack = "b2";
        };
        description = "Labels the agent advertises.";
      };
    };
  };

  targets = mkOption {
    type = types.attrsOf (
      types.submodule (
        { name, ... }:
        {
          freeformType = settingsFormat.type;
          options = {
            base_path = mkOption {
              type = types.str;
              default =
                if name == "local" then
                  "${stateDir}/work"
                else
                  throw "services.repx.settings.targets.${name}.base_path is not set: every target but `local` needs one.";
              defaultText = literalExpression ''if name == "local" then "''${config.services.repx.stateDir}/work" else null'';
              description = ''
                Where outputs go (`<base>/outputs/<jobId>`). For a target on this host (no
                `address`) the module creates it for the service user and lets the agent write
                there. Defaults to `''${stateDir}/work` for the target named `local`.
              '';
            };
            address = nullOption types.str "The remote host of an SSH or SLURM target; unset: this host.";
            default_execution_type = nullOption (types.enum [
              "native"
              "bwrap"
              "podman"
              "docker"
            ]) "How runs with an image run on this target; unset: natively.";
          };
        }
      )
    );
    default = {
      local = { };
    };
    defaultText = literalExpression ''{ local.base_path = "''${config.services.repx.stateDir}/work"; }'';
    description = "Targets, as in repx's config.toml. Defining any other replaces the default `local`.";
  };

  resources = mkOption {
    default = { };
    description = "Resources per job (resources.toml): `defaults`, then matching `rules` in order.";
    type = freeform {
      defaults = mkOption {
        type = resourceRule;
        default = { };
        description = "Resources of every job; see also {option}`services.repx.jobs.defaultLimits`.";
      };
      rules = mkOption {
        type = types.listOf resourceRule;
        default = [ ];
        example = literalExpression ''[ { job_id_glob = "*-train-*"; mem = "32G"; gpus = 1; } ]'';
        description = "Rules applied in order to matching jobs; the last match wins.";
      };
    };
  };
}
