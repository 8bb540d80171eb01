# services.repx: the repx API, scheduler and agent under systemd.
#
# The units come from the package (lib/systemd/system, the same files `repxd install-units`
# writes on other distributions); this module layers NixOS settings on them as drop-ins.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkIf
    mkOption
    mkEnableOption
    mkDefault
    types
    optional
    optionals
    ;
  cfg = config.services.repx;
  repxLib = import ./lib.nix { inherit lib; };
  inherit (repxLib) splitListener isLoopback secretPathType;

  settingsFormat = pkgs.formats.toml { };

  allRoles = [
    "api"
    "scheduler"
    "agent"
  ];
  roles = lib.filter (role: cfg.${role}.enable) allRoles;
  unitOf = role: "repx-${role}";

  tcp = if cfg.settings.api.tcp == null then null else splitListener cfg.settings.api.tcp;
  agentUrl = cfg.settings.agent.api != null && builtins.match "https?://.*" cfg.settings.agent.api != null;
  hasTokens = cfg.settings.api.agent_token_file != null || cfg.settings.api.admin_token_file != null;
  credentialPath = role: name: "/run/credentials/${unitOf role}.service/${name}";

  # nixpkgs' static ids (nixos/modules/misc/ids.nix) that `id` would collide with, as
  # "ids.uids.<name>"; none where that table is not evaluated.
  staticIdsOf =
    kind: id:
    if id == null then
      [ ]
    else
      map (name: "config.ids.${kind}.${name}") (
        lib.attrNames (lib.filterAttrs (_: v: v == id) (config.ids.${kind} or { }))
      );
  idCollision =
    option: kind: id:
    let
      taken = staticIdsOf kind id;
    in
    {
      assertion = taken == [ ];
      message = ''
        services.repx.${option} = ${toString id} is already nixpkgs' static id ${lib.concatStringsSep ", " taken}:
        pick a number no NixOS module reserves and no host of the cluster uses yet (dynamic
        system ids come from 400-999), and set the same one on every host.'';
    };

  rawConfig = settingsFormat.generate "repxd.toml" (repxLib.dropNulls cfg.settings);
  # `repxd check-config` at build time: a key repxd does not know fails the build, not the boot.
  # It runs the host's repxd on the build machine: skipped when that cannot execute it (cross).
  canCheck = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
  configFile =
    if cfg.checkConfig && canCheck then
      pkgs.runCommandLocal "repxd-checked.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          raw = rawConfig;
        }
        ''
          repxd check-config "$raw" --no-files  # token files are credentials of the running host
          cp "$raw" "$out"
        ''
    else
      rawConfig;

  execStart =
    role:
    lib.concatStringsSep " " (
      [
        "${lib.getExe' cfg.package "repxd"}"
        role
        "--config"
        "/etc/repx/repxd.toml"
      ]
      ++ map repxLib.systemdArg cfg.extraArgs
    );

  # What the agent runs by name: NixOS gives units only coreutils, findutils, grep, sed and
  # systemd on PATH. bubblewrap always (a run may ask for it); podman and docker where a target
  # uses them (they are large); a SLURM target's commands from services.slurm.
  executionTypes = lib.unique (
    lib.concatMap (
      t:
      lib.optional (t.default_execution_type != null) t.default_execution_type
      ++ (t.local.execution_types or [ ])
      ++ (t.slurm.execution_types or [ ])
    ) (lib.attrValues cfg.settings.targets)
  );
  slurmTargets = lib.filterAttrs (_: t: (t.default_scheduler or null) == "slurm") cfg.settings.targets;
  agentPath =
    [ pkgs.bubblewrap ]
    ++ optional (lib.elem "podman" executionTypes) pkgs.podman
    ++ optional (lib.elem "docker" executionTypes) pkgs.docker
    ++ optional (slurmTargets != { } && config.services ? slurm) config.services.slurm.package;

  # Each role gets only the credentials it uses: the API checks the tokens, an agent presents
  # its own; the scheduler needs none. Credentials of other names (an SSH key, say) go to every
  # role, as the option documents.
  roleCredentialNames = {
    api = [
      "agent-token"
      "admin-token"
      "metrics-token"
    ];
    agent = [ "agent-token" ];
    scheduler = [ ];
  };
  knownCredentialNames = lib.unique (lib.concatLists (lib.attrValues roleCredentialNames));
  credentialsOf =
    role:
    lib.filterAttrs (
      name: _: lib.elem name roleCredentialNames.${role} || !(lib.elem name knownCredentialNames)
    ) cfg.credentials;

  roleService = role: {
    wantedBy = [ "repx.target" ];
    restartTriggers = [ configFile ];
    serviceConfig = {
      User = cfg.user;
      Group = cfg.group;
      WatchdogSec = mkDefault (if cfg.watchdogSec == 0 then "0" else "${toString cfg.watchdogSec}s");
      LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") (credentialsOf role);
      ReadWritePaths = optional (cfg.stateDir != "/var/lib/repx") cfg.stateDir;
    }
    // lib.optionalAttrs (cfg.environmentFile != null) { EnvironmentFile = cfg.environmentFile; }
    // lib.optionalAttrs (cfg.extraArgs != [ ]) {
      ExecStart = [
        ""
        (execStart role)
      ];
    };
  };

  shippedRules = "${cfg.package}/share/repx/polkit/60-repx.rules";
  polkitRules =
    if cfg.user == "repx" then
      shippedRules
    else
      pkgs.runCommandLocal "60-repx.rules" { } ''
        sed 's/subject.user != "repx"/subject.user != ${builtins.toJSON cfg.user}/' ${shippedRules} > "$out"
        grep -qF 'subject.user != ${builtins.toJSON cfg.user}' "$out"
      '';

  # Base paths on this host: targets without a remote `address`.
  basePaths = lib.mapAttrsToList (_: t: t.base_path) (
    lib.filterAttrs (_: t: t.address == null) cfg.settings.targets
  );
in
{
  imports = [
    ./gpu.nix
    ./metrics.nix
  ];

  options.services.repx = {
    enable = mkEnableOption "repx, the reproducible-experiments service (API, scheduler, agent)";

    package = lib.mkPackageOption pkgs "repx" {
      extraDescription = "The flake's `nixosModules.default` sets it to the flake's own package.";
    };

    api.enable = mkEnableOption "the API role (repx-api.service) on this host" // { default = true; };
    scheduler.enable = mkEnableOption "the scheduler role (repx-scheduler.service) on this host" // { default = true; };
    agent.enable = mkEnableOption "the agent role (repx-agent.service), which runs jobs on this host" // { default = true; };

    user = mkOption {
      type = types.str;
      default = "repx";
      description = "The user the roles run as; created when left at `repx`.";
    };
    group = mkOption {
      type = types.str;
      default = "repx";
      description = "The group the roles run as; created when left at `repx`.";
    };
    uid = mkOption {
      type = types.nullOr types.ints.u32;
      default = null;
      example = 3850;
      description = ''
        The uid of services.repx.user; `null` lets NixOS pick one, which can differ from host to
        host. Set the same number on every host of a cluster sharing outputs (a base path on NFS),
        so that files one host's agent writes belong to the service user on all of them. nixpkgs'
        own table of static ids cannot be extended from outside; an assertion refuses a number
        that table already holds.
      '';
    };
    gid = mkOption {
      type = types.nullOr types.ints.u32;
      default = null;
      example = 3850;
      description = ''
        The gid of services.repx.group; `null` lets NixOS pick one. Set the same number on every
        host of a cluster sharing outputs (see services.repx.uid).
      '';
    };

    stateDir = mkOption {
      type = types.strMatching "/.*[^/]";
      default = "/var/lib/repx";
      description = "Where the roles keep state.db and, by default, the `local` target's outputs.";
    };

    settings = mkOption {
      type = import ./settings.nix {
        inherit lib settingsFormat;
        inherit (cfg) stateDir;
      };
      default = { };
      example = lib.literalExpression ''
        {
          api.tcp = "0.0.0.0:8420";
          api.allowed_groups = [ "repx" ];
          scheduler.lease_seconds = 30;
          agent.slots = 16;
          targets.local.base_path = "/srv/repx";
        }
      '';
      description = ''
        repxd.toml, written to /etc/repx/repxd.toml (`repxd check-config` lists its keys).
        Options left unset take repxd's defaults.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to run `repxd check-config` on the generated file at build time.";
    };

    environmentFile = mkOption {
      type = types.nullOr secretPathType;
      default = null;
      example = "/run/secrets/repx.env";
      description = "An EnvironmentFile= for every role, read at start and never copied to the store.";
    };

    credentials = mkOption {
      type = types.attrsOf secretPathType;
      default = { };
      example = {
        agent-token = "/run/secrets/repx-agent-token";
        ssh-key = "/run/secrets/repx-ssh-key";
      };
      description = ''
        Files handed to the roles with LoadCredential= (as
        /run/credentials/repx-<role>.service/<name>), so secrets stay out of the store and are
        readable by the service only. Each role gets only what it uses: the API `agent-token`,
        `admin-token` and `metrics-token`, an agent `agent-token`, the scheduler none; other
        names go to every role. `agent-token` and `admin-token` are wired to the API's
        token files and, for an agent whose API is an URL, to its token_file; `metrics-token` to
        the API's metrics_token_file and to the API's scrape in
        {option}`services.repx.metrics.scrapeConfigs` (so Prometheus must be able to read it too).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open the API's TCP port ({option}`services.repx.settings.api.tcp`).";
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "WatchdogSec= of every role, in seconds; 0 turns the watchdog off.";
    };

    logLevel = mkOption {
      type = types.enum [
        "debug"
        "info"
        "warning"
        "error"
      ];
      default = "info";
      description = "Log level of every role (journald, with REPX_ROLE, REPX_RUN_ID, REPX_JOB_ID fields).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Arguments appended to every role's `repxd <role> --config ...` command line.";
    };

    jobs = {
      slice = mkOption {
        type = types.attrsOf (types.oneOf [ types.str types.int types.bool ]);
        default = { };
        example = {
          MemoryMax = "90%";
          CPUWeight = 50;
        };
        description = "Settings of repx-jobs.slice, the cgroup of the agent and its jobs.";
      };
      defaultLimits = {
        mem = mkOption {
          type = types.nullOr repxLib.memoryType;
          default = null;
          example = "2G";
          description = "Memory of a job that asks for none (resources.defaults.mem).";
        };
        cpus = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          description = "CPUs of a job that asks for none (resources.defaults.cpus-per-task).";
        };
        time = mkOption {
          type = types.nullOr repxLib.timeType;
          default = null;
          example = "04:00:00";
          description = "Time limit of a job that asks for none (resources.defaults.time).";
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = roles != [ ];
        message = ''
          services.repx.enable is set but services.repx.api.enable, .scheduler.enable and
          .agent.enable are all false; enable at least one role, or set services.repx.enable = false.'';
      }
      {
        assertion = cfg.openFirewall -> (cfg.api.enable && tcp != null && !isLoopback tcp.host);
        message = ''
          services.repx.openFirewall opens the API's TCP port, but the API ${
            if !cfg.api.enable then "role is disabled on this host"
            else if tcp == null then "has no TCP listener"
            else "listens on loopback only (${cfg.settings.api.tcp})"
          }. Set services.repx.settings.api.tcp = "0.0.0.0:8420" (or this host's address), or
          set services.repx.openFirewall = false.'';
      }
      {
        assertion = (cfg.agent.enable && !cfg.api.enable) -> cfg.settings.agent.api != null;
        message = ''
          services.repx.agent runs on this host without the API, so it needs to know where the API is:
          set services.repx.settings.agent.api = "http://<api-host>:8420" and
          services.repx.credentials.agent-token to the agent token's file.'';
      }
      {
        assertion = (cfg.agent.enable && agentUrl) -> cfg.settings.agent.token_file != null;
        message = ''
          services.repx.settings.agent.api is an URL (${toString cfg.settings.agent.api}), and the API
          refuses agents without a token over TCP: set services.repx.credentials.agent-token =
          "/run/secrets/repx-agent-token" (a file outside the store).'';
      }
      (idCollision "uid" "uids" cfg.uid)
      (idCollision "gid" "gids" cfg.gid)
    ];

    warnings =
      optional (cfg.api.enable && tcp != null && !hasTokens) ''
        services.repx.settings.api.tcp listens on ${cfg.settings.api.tcp} but no token is configured:
        every TCP request except /metrics and /v1/health will be refused. Set
        services.repx.credentials.agent-token and/or admin-token.''
      ++ optional (cfg.api.enable && tcp != null && !isLoopback tcp.host) ''
        services.repx.settings.api.tcp (${cfg.settings.api.tcp}) is plain HTTP beyond this host:
        tokens and run data cross the network unencrypted. Keep it on a trusted network or VPN.'';

    services.repx.settings = {
      state_dir = cfg.stateDir;
      log_level = cfg.logLevel;
      api.agent_token_file = mkIf (cfg.api.enable && cfg.credentials ? agent-token) (
        mkDefault (credentialPath "api" "agent-token")
      );
      api.admin_token_file = mkIf (cfg.api.enable && cfg.credentials ? admin-token) (
        mkDefault (credentialPath "api" "admin-token")
      );
      api.metrics_token_file = mkIf (cfg.api.enable && cfg.credentials ? metrics-token) (
        mkDefault (credentialPath "api" "metrics-token")
      );
      agent.token_file = mkIf (cfg.credentials ? agent-token && agentUrl) (
        mkDefault (credentialPath "agent" "agent-token")
      );
      resources.defaults = lib.mapAttrs (_: mkDefault) (
        lib.filterAttrs (_: v: v != null) {
          inherit (cfg.jobs.defaultLimits) mem time;
          "cpus-per-task" = cfg.jobs.defaultLimits.cpus;
        }
      );
    };

    environment.etc."repx/repxd.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];
    environment.variables = mkIf (cfg.api.enable && cfg.settings.api.socket != "/run/repx/api.sock") {
      REPX_API = cfg.settings.api.socket;
    };

    users.users = lib.mkMerge [
      (mkIf (cfg.user == "repx") {
        repx = {
          isSystemUser = true;
          group = cfg.group;
          home = cfg.stateDir;
          description = "repx service";
        };
      })
      (mkIf (cfg.uid != null) { ${cfg.user}.uid = cfg.uid; })
    ];
    users.groups = lib.mkMerge [
      (mkIf (cfg.group == "repx") { repx = { }; })
      (mkIf (cfg.gid != null) { ${cfg.group}.gid = cfg.gid; })
    ];

    systemd.packages = [ cfg.package ];
    systemd.targets.repx.wantedBy = [ "multi-user.target" ];
    systemd.slices.repx-jobs = mkIf (cfg.jobs.slice != { }) { sliceConfig = cfg.jobs.slice; };

    # A role not enabled here is masked: repx.target (from the package) wants all three.
    systemd.services = lib.mkMerge [
      (lib.genAttrs (map unitOf allRoles) (unit: {
        enable = lib.elem unit (map unitOf roles);
      }))
      (lib.genAttrs (map unitOf roles) (unit: roleService (lib.removePrefix "repx-" unit)))
      (mkIf cfg.agent.enable {
        # The package's unit names the default user; a custom one must be named here too.
        repx-hwdetect.serviceConfig = {
          User = cfg.user;
          Group = cfg.group;
        };
        repx-agent = {
          path = agentPath;
          # Outputs go under the targets' base paths; the unit's ProtectSystem=strict hides the
          # rest. "-": a base path the agent creates on first use may not exist yet.
          serviceConfig.ReadWritePaths = map (p: "-${p}") basePaths;
          after = optionals agentUrl [ "network-online.target" ];
          wants = optionals agentUrl [ "network-online.target" ];
        };
      })
      (mkIf (cfg.api.enable && tcp != null && !isLoopback tcp.host) {
        # The unit admits loopback peers only; agents on other hosts reach the TCP listener.
        repx-api.serviceConfig.IPAddressAllow = [ "any" ];
      })
    ];

    systemd.tmpfiles.rules =
      optional (cfg.stateDir != "/var/lib/repx") "d ${cfg.stateDir} 0755 ${cfg.user} ${cfg.group} -"
      ++ map (p: "d ${p} 0755 ${cfg.user} ${cfg.group} -") (
        lib.filter (p: !lib.hasPrefix "${cfg.stateDir}/" p) basePaths
      );

    networking.firewall.allowedTCPPorts = optional (cfg.openFirewall && tcp != null) tcp.port;

    # The agent starts each job as a transient unit repx-job-<id>.service over D-Bus; the
    # package's polkit rule (repxd/systemd/repx.polkit.rules) lets the service user do that.
    security.polkit.enable = mkIf cfg.agent.enable true;
    environment.etc."polkit-1/rules.d/60-repx.rules" = mkIf cfg.agent.enable { source = polkitRules; };
  };

  # No meta.doc: the NixOS manual renders every module's doc and rejects headings without
  # {#id} anchors, which the README has not; the options' descriptions are the manual's part.
  meta = {
    # The maintainer type admits only entries of nixpkgs' lib.maintainers, where repx's
    # maintainers are not (yet); see the repository for who maintains this module.
    maintainers = [ ];
  };
}
