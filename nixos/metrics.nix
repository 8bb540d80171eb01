# services.repx.metrics: the roles' Prometheus endpoints and a ready scrape configuration.
#
# The scheduler serves /metrics on `port`, the agent on `port + 1`; the API serves /metrics on
# its own TCP listener (settings.api.tcp), when it has one.
{ config, lib, ... }:
let
  inherit (lib) mkIf mkOption types optional;
  cfg = config.services.repx;
  m = cfg.metrics;
  repxLib = import ./lib.nix { inherit lib; };
  inherit (repxLib) isLoopback isWildcard urlHost splitListener;

  ports = {
    scheduler = m.port;
    agent = m.port + 1;
  };
  listen = role: if m.enable then "${m.listenAddress}:${toString ports.${role}}" else "";

  # How Prometheus reaches a listener: this host's name when it listens on every address.
  target = host: port: "${urlHost (if isWildcard host then config.networking.hostName else host)}:${toString port}";
  tcp = cfg.settings.api.tcp;
  apiEndpoint = {
    role = "api";
    target = let l = splitListener tcp; in target l.host l.port;
  };
  # With tokens, the API's TCP /metrics needs one: Prometheus gets the metrics token (it opens
  # /metrics only), from the file services.repx.credentials.metrics-token names.
  apiHasTokens = cfg.settings.api.agent_token_file != null || cfg.settings.api.admin_token_file != null;
  metricsToken = cfg.credentials.metrics-token or null;
  scrapeApi = cfg.api.enable && tcp != null;
  apiNeedsItsOwnJob = scrapeApi && apiHasTokens;
  endpoints =
    optional (scrapeApi && !apiHasTokens) apiEndpoint
    ++ optional (m.enable && cfg.scheduler.enable) {
      role = "scheduler";
      target = target m.listenAddress ports.scheduler;
    }
    ++ optional (m.enable && cfg.agent.enable) {
      role = "agent";
      target = target m.listenAddress ports.agent;
    };
in
{
  options.services.repx.metrics = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether the scheduler and the agent serve Prometheus metrics.";
    };
    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = "Address the scheduler's and the agent's /metrics listen on.";
    };
    port = mkOption {
      type = types.port;
      default = 9421;
      description = "Port of the scheduler's /metrics; the agent's is the next one.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open the metrics ports of the roles enabled here.";
    };
    scrapeConfigs = mkOption {
      type = types.listOf (types.attrsOf types.anything);
      readOnly = true;
      defaultText = lib.literalMD "one job for the roles enabled on this host";
      description = ''
        Prometheus scrape configurations of this host's roles, one job named `repx-<hostName>`
        with a `role` label per target; for example
        `services.prometheus.scrapeConfigs = config.services.repx.metrics.scrapeConfigs;`, or on a
        monitoring host, the concatenation of every node's list.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = m.enable -> m.port < 65535;
        message = ''
          services.repx.metrics.port = ${toString m.port} leaves no port for the agent (port + 1):
          choose a port below 65535.'';
      }
      {
        assertion = m.openFirewall -> (m.enable && !isLoopback m.listenAddress);
        message = ''
          services.repx.metrics.openFirewall opens the metrics ports, but ${
            if m.enable then "services.repx.metrics.listenAddress is loopback (${m.listenAddress})"
            else "services.repx.metrics.enable is false"
          }: set services.repx.metrics.listenAddress = "0.0.0.0" (or this host's address), or set
          services.repx.metrics.openFirewall = false.'';
      }
    ];

    services.repx.metrics.scrapeConfigs = optional (endpoints != [ ]) {
      job_name = "repx-${config.networking.hostName}";
      static_configs = map (e: {
        targets = [ e.target ];
        labels.role = e.role;
      }) endpoints;
    } ++ optional (apiNeedsItsOwnJob && metricsToken != null) {
      job_name = "repx-${config.networking.hostName}-api";
      authorization.credentials_file = metricsToken;
      static_configs = [ { targets = [ apiEndpoint.target ]; labels.role = "api"; } ];
    };

    warnings = optional (apiNeedsItsOwnJob && metricsToken == null) ''
      services.repx.settings.api.tcp has tokens, so its /metrics needs one too: set
      services.repx.credentials.metrics-token (a file Prometheus can read as well) to scrape the
      API; scrapeConfigs leaves it out meanwhile.'';

    # An empty listener turns a role's metrics off in repxd.
    services.repx.settings.scheduler.metrics = listen "scheduler";
    services.repx.settings.agent.metrics = listen "agent";

    networking.firewall.allowedTCPPorts = lib.optionals m.openFirewall (
      optional cfg.scheduler.enable ports.scheduler ++ optional cfg.agent.enable ports.agent
    );

    # The scheduler's unit admits loopback peers only; a scrape from elsewhere needs more.
    systemd.services.repx-scheduler.serviceConfig.IPAddressAllow = mkIf (
      cfg.scheduler.enable && m.enable && !isLoopback m.listenAddress
    ) [ "any" ];
  };
}
