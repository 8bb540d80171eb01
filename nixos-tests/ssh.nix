# repx sending a Lab to an SSH target: the `lab` node runs every repx role; `remote` is a plain
# NixOS host with sshd and a research account, and nothing of repx installed. The agent reaches it
# with a key handed over as a systemd credential and a known_hosts file filled the way the
# refusal message tells an operator to. The scenario is the one the CI tier runs against its own
# sshd in a network namespace (tests/integration/ssh).
{
  pkgs,
  common,
  scenarios,
  ...
}:
let
  keys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;
  knownHosts = "/var/lib/repx/ssh_known_hosts";
in
pkgs.testers.runNixOSTest {
  name = "repx-ssh";

  nodes.remote =
    { ... }:
    {
      services.openssh.enable = true;
      users.users.research = {
        isNormalUser = true;
        openssh.authorizedKeys.keys = [ keys.snakeOilPublicKey ];
      };
    };

  nodes.lab =
    { ... }:
    {
      imports = [ common.single ];
      # Test-only key. As for the tokens, a real deployment points the credential at a file
      # outside the store (agenix, sops-nix, systemd-creds).
      environment.etc."repx-test/ssh-key" = {
        text = keys.snakeOilPrivateKey;
        mode = "0400";
      };
      services.repx.credentials.ssh-key = "/etc/repx-test/ssh-key";
      services.repx.settings.targets.remote = {
        address = "research@remote";
        base_path = "/home/research/repx";
        default_scheduler = "local";
        ssh = {
          credential = "ssh-key";
          known_hosts = knownHosts;
        };
      };
    };

  extraPythonPackages = p: [ (scenarios p) ];

  testScript = ''
    from repx_scenarios import scenarios

    sweep = "/etc/repx-test/labs/sweep-scatter"

    start_all()
    remote.wait_for_unit("sshd.service")
    lab.wait_for_unit("network-online.target")

    with subtest("the roles come up"):
        scenarios.units_become_ready(lab)

    with subtest("the operator trusts the remote's host key, as repx's refusal says"):
        lab.succeed("ssh-keyscan -t ed25519 remote > ${knownHosts} && chown repx: ${knownHosts}")

    with subtest("a researcher's sweep runs on the remote host"):
        scenarios.ssh_target_runs(lab, remote, "alice", sweep, "sweep", "remote", "/home/research/repx")
  '';
}
