# Node configurations shared by the VM tests: every node runs services.repx from this flake with
# the same uid/gid, test-only tokens, and the example Labs at /etc/repx-test/labs/<name>.
{ module, labs }:
let
  tokens = {
    # Test-only secrets. They live in the store here; a real deployment points
    # services.repx.credentials at files outside it (agenix, sops-nix, systemd-creds).
    agent-token = "/etc/repx-test/agent-token";
    admin-token = "/etc/repx-test/admin-token";
  };

  base =
    { lib, pkgs, ... }:
    {
      imports = [ module ];
      virtualisation.memorySize = 1536;
      virtualisation.cores = 2;
      users.users.repx.uid = 940;
      users.groups.repx.gid = 940;
      environment.systemPackages = [ pkgs.curl ];
      environment.etc =
        {
          "repx-test/agent-token".text = "agent-token-for-vm-tests";
          "repx-test/admin-token".text = "admin-token-for-vm-tests";
        }
        // lib.mapAttrs' (name: path: lib.nameValuePair "repx-test/labs/${name}" { source = path; }) labs;
      services.repx = {
        enable = true;
        logLevel = "debug";
      };
    };
in
{
  inherit base tokens;

  # API, scheduler and agent on one host, everything on loopback.
  single =
    { ... }:
    {
      imports = [ base ];
      services.repx = {
        # A loopback TCP listener so that Prometheus can scrape the API's /metrics.
        settings.api.tcp = "127.0.0.1:8420";
        settings.agent.run_as_submitter = true;
        credentials.admin-token = tokens.admin-token;
      };
      users.users.alice.isNormalUser = true; # a researcher who submits runs
    };

  # API and scheduler for a cluster; agents connect over TCP with the agent token.
  server =
    { ... }:
    {
      imports = [ base ];
      services.repx = {
        agent.enable = false;
        openFirewall = true;
        settings.api.tcp = "0.0.0.0:8420";
        # Lose a crashed agent's attempts sooner than the default 15 s.
        settings.scheduler.lease_seconds = 10;
        credentials = tokens;
      };
    };

  agent =
    { ... }:
    {
      imports = [ base ];
      services.repx = {
        api.enable = false;
        scheduler.enable = false;
        settings.agent.api = "http://server:8420";
        credentials.agent-token = tokens.agent-token;
      };
    };
}
