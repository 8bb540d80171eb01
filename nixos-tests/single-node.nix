# One host with every role: units come up, an example Lab runs through repxctl, jobs run as
# transient units, the agent restarts under a job, the watchdog catches a frozen scheduler,
# the journal has the jobs' fields, time limits hold, Prometheus scrapes the roles, and a reboot
# mid-run ends with the run complete.
{
  pkgs,
  common,
  labs,
  scenarios,
  ...
}:
pkgs.testers.runNixOSTest {
  name = "repx-single-node";

  nodes.machine =
    { config, ... }:
    {
      imports = [ common.single ];
      services.prometheus = {
        enable = true;
        globalConfig.scrape_interval = "2s";
        scrapeConfigs = config.services.repx.metrics.scrapeConfigs;
      };
    };

  extraPythonPackages = p: [ (scenarios p) ];

  testScript = ''
    from repx_scenarios import prometheus, scenarios

    simple = "/etc/repx-test/labs/simple"
    naps = "/etc/repx-test/labs/naps"

    machine.start(allow_reboot=True)  # a scenario reboots it; without this QEMU runs with -no-reboot

    with subtest("units become ready"):
        scenarios.units_become_ready(machine)
        machine.succeed("test -L /etc/repx/repxd.toml")
        machine.succeed("repxd check-config /etc/repx/repxd.toml")

    with subtest("repxctl runs an example Lab"):
        run_id = scenarios.example_lab_runs(machine, simple)
        jobs = scenarios.run_jobs(machine, run_id)

    with subtest("a researcher's jobs run as that researcher"):
        scenarios.jobs_run_as_their_submitter(machine, "alice", "/etc/repx-test/labs/sweep-scatter", "sweep")

    with subtest("journald has the jobs' fields"):
        scenarios.journal_has_job_fields(machine, jobs[0]["job_id"])

    with subtest("jobs run as transient units in repx-jobs.slice"):
        scenarios.jobs_run_as_transient_units(machine, naps, "nap-10s", memory_max=96 * 2**20)

    with subtest("restarting the agent keeps a running job"):
        scenarios.agent_restart_keeps_job(machine, naps, "nap-20s")

    with subtest("the watchdog restarts a frozen scheduler"):
        scenarios.watchdog_restarts_frozen_scheduler(machine)

    with subtest("cancelling a run stops its job's unit"):
        scenarios.cancel_stops_the_unit(machine, naps, "nap-30s")

    with subtest("a job past its time limit is stopped and fails saying so"):
        scenarios.time_limit_is_enforced(machine, naps, "nap-overtime")

    with subtest("Prometheus scrapes every role"):
        machine.wait_for_unit("prometheus.service")
        machine.wait_for_open_port(9090)
        prometheus.roles_are_scraped(machine, ["api", "scheduler", "agent"])
        done = prometheus.value_at_least(machine, 'sum(repx_jobs{state="succeeded"})', len(jobs))
        print(f"Prometheus sees {done:.0f} succeeded jobs")
        prometheus.value_at_least(machine, "sum(repx_api_requests_total)", 1)

    with subtest("a reboot mid-run: repx comes back and the run completes"):
        scenarios.reboot_mid_run_completes(machine, naps, "nap-30s")
  '';
}
