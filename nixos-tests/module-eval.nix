# `nix flake check` companion of tests/nix: services.repx evaluated by the real NixOS (not a
# stub), for each role combination and for configurations that must be refused. Building the
# check runs `repxd check-config` on each generated repxd.toml.
{ pkgs, module }:
let
  inherit (pkgs) lib;

  evalNixos =
    extra:
    (import "${pkgs.path}/nixos/lib/eval-config.nix" {
      inherit (pkgs.stdenv.hostPlatform) system;
      modules = [
        module
        extra
        {
          nixpkgs.pkgs = pkgs;
          boot.isContainer = true;
          networking.hostName = "evalhost";
          system.stateVersion = lib.trivial.release;
          services.repx.enable = true;
        }
      ];
    }).config;

  failed = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  unitText = config: name: config.systemd.units.${name}.text or "";
  masked = config: name: !(config.systemd.units.${name}.enable or true);

  all = evalNixos { };
  agentOnly = evalNixos {
    services.repx = {
      api.enable = false;
      scheduler.enable = false;
      settings.agent.api = "http://server:8420";
      credentials.agent-token = "/run/secrets/agent-token";
    };
  };
  apiScheduler = evalNixos {
    services.repx = {
      agent.enable = false;
      settings.api.tcp = "0.0.0.0:8420";
      openFirewall = true;
      credentials.agent-token = "/run/secrets/agent-token";
    };
  };
  stableIds = evalNixos {
    services.repx = {
      uid = 3850;
      gid = 3850;
    };
  };
  # 307 is slurm's uid and gid in nixpkgs' ids.nix.
  reservedIds = evalNixos (
    { config, ... }:
    {
      services.repx.uid = config.ids.uids.slurm;
    }
  );
  cudaWithoutDriver = evalNixos { services.repx.gpu.backend = "cuda"; };
  portOutOfRange = evalNixos { services.repx.metrics.port = 70000; };

  expectations = {
    "all roles: no failed assertion" = failed all == [ ];
    "all roles: units wanted by repx.target" =
      lib.hasInfix "repx.target" (lib.concatStringsSep " " all.systemd.services.repx-agent.wantedBy);
    "all roles: config in /etc" = all.environment.etc ? "repx/repxd.toml";
    "agent only: no failed assertion" = failed agentOnly == [ ];
    "agent only: api and scheduler masked" =
      masked agentOnly "repx-api.service" && masked agentOnly "repx-scheduler.service";
    "agent only: token credential loaded" =
      lib.hasInfix "LoadCredential=agent-token:/run/secrets/agent-token" (unitText agentOnly "repx-agent.service");
    "api+scheduler: no failed assertion" = failed apiScheduler == [ ];
    "api+scheduler: agent masked" = masked apiScheduler "repx-agent.service";
    "api+scheduler: port 8420 open" = lib.elem 8420 apiScheduler.networking.firewall.allowedTCPPorts;
    "uid/gid 3850: no failed assertion" = failed stableIds == [ ];
    "uid/gid 3850: set on the service user and group" =
      stableIds.users.users.repx.uid == 3850 && stableIds.users.groups.repx.gid == 3850;
    "a uid nixpkgs reserves is refused" =
      lib.any (lib.hasInfix "config.ids.uids.slurm") (failed reservedIds);
    "cuda without the NVIDIA driver is refused" =
      lib.any (lib.hasInfix "services.repx.gpu.backend") (failed cudaWithoutDriver);
    "metrics.port 70000 is a type error" =
      !(builtins.tryEval (builtins.deepSeq portOutOfRange.services.repx.metrics.port true)).success;
  };
  broken = lib.attrNames (lib.filterAttrs (_: ok: !ok) expectations);
  checkedConfigs = map (c: c.environment.etc."repx/repxd.toml".source) [
    all
    agentOnly
    apiScheduler
  ];
in
pkgs.runCommand "repx-module-eval" { } (
  if broken == [ ] then
    ''
      ${lib.concatMapStrings (c: "cat ${c} > /dev/null\n") checkedConfigs}
      echo "${toString (lib.length (lib.attrNames expectations))} expectations hold" > "$out"
    ''
  else
    ''
      echo "services.repx module expectations that do not hold:" >&2
      ${lib.concatMapStrings (b: "echo ${lib.escapeShellArg "  - ${b}"} >&2\n") broken}
      exit 1
    ''
)
