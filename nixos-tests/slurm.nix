# repx on a SLURM cluster: one host running nixpkgs' services.slurm (slurmctld, slurmd, slurmdbd
# on MariaDB, munge) and every repx role. A researcher submits an example Lab to a SLURM target;
# its jobs become SLURM batch jobs of that researcher. The scenario is the one the CI tier runs
# against its own real cluster (tests/integration/slurm/test_slurm_users.py).
{
  pkgs,
  common,
  scenarios,
  ...
}:
let
  mungeKey = "repx-vm-test-munge-key-not-a-secret-0123456789";
  dbPassword = "repx-vm-test-slurmdbd";
in
pkgs.testers.runNixOSTest {
  name = "repx-slurm";

  nodes.hpc =
    { config, pkgs, ... }:
    {
      imports = [ common.single ];
      virtualisation.memorySize = 2048;
      networking.hostName = "hpc";

      services.munge.enable = true;
      systemd.tmpfiles.rules = [ "f /etc/munge/munge.key 0400 munge munge - ${mungeKey}" ];

      services.mysql = {
        enable = true;
        package = pkgs.mariadb;
        ensureDatabases = [ "slurm_acct_db" ];
        initialScript = pkgs.writeText "slurmdbd.sql" ''
          CREATE USER 'slurm'@'localhost' IDENTIFIED BY '${dbPassword}';
          GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
        '';
      };

      services.slurm = {
        server.enable = true;
        client.enable = true;
        controlMachine = "hpc";
        nodeName = [ "hpc CPUs=2 RealMemory=1500 State=UNKNOWN" ];
        partitionName = [ "debug Nodes=hpc Default=YES MaxTime=INFINITE State=UP" ];
        dbdserver = {
          enable = true;
          dbdHost = "hpc";
          storagePassFile = "${pkgs.writeText "slurmdbd-pass" dbPassword}";
        };
        extraConfig = ''
          AccountingStorageType=accounting_storage/slurmdbd
          JobAcctGatherType=jobacct_gather/linux
          MinJobAge=10
        '';
      };

      # Outputs on a path every node would share (one node here); alice's jobs write there.
      systemd.tmpfiles.settings."10-repx-hpc"."/srv/hpc".d = {
        mode = "0755";
        user = "root";
      };
      services.repx.settings.targets.hpc = {
        base_path = "/srv/hpc";
        default_scheduler = "slurm";
        slurm.poll_interval = 1.0;
      };
      # The module puts services.slurm's commands on the agent's PATH; this is where they find
      # the cluster's configuration.
      systemd.services.repx-agent.environment.SLURM_CONF = "/etc/slurm/slurm.conf";
      environment.systemPackages = [ config.services.slurm.package ];
    };

  extraPythonPackages = p: [ (scenarios p) ];

  testScript = ''
    from repx_scenarios import scenarios

    sweep = "/etc/repx-test/labs/sweep-scatter"

    hpc.start()
    hpc.wait_for_unit("munged.service")
    hpc.wait_for_unit("mysql.service")
    hpc.wait_for_unit("slurmdbd.service")
    hpc.wait_for_unit("slurmctld.service")
    hpc.wait_for_unit("slurmd.service")
    hpc.wait_until_succeeds('test -n "$(sacctmgr --noheader list cluster)"', timeout=120)
    hpc.succeed("sacctmgr --immediate add account research Cluster=default || true")
    hpc.succeed("sacctmgr --immediate add user alice Account=research")

    with subtest("the roles come up"):
        scenarios.units_become_ready(hpc)

    with subtest("a researcher's sweep runs as SLURM batch jobs of that researcher"):
        scenarios.slurm_target_runs(hpc, "alice", sweep, "sweep", "hpc", "/srv/hpc")
  '';
}
