# One API + scheduler host and two agent-only hosts: agents register over TCP with the agent
# token, a drained agent gets no new job, and a job whose agent dies mid-run is placed again on
# the other agent and succeeds there.
{
  pkgs,
  common,
  scenarios,
  ...
}:
pkgs.testers.runNixOSTest {
  name = "repx-cluster";

  nodes = {
    server = common.server;
    agent1 = common.agent;
    agent2 = common.agent;
  };

  extraPythonPackages = p: [ (scenarios p) ];

  testScript = ''
    from repx_scenarios import cluster, scenarios

    naps = "/etc/repx-test/labs/naps"

    start_all()

    with subtest("the roles come up where they are enabled"):
        cluster.server_ready(server)
        for agent in (agent1, agent2):
            agent.wait_for_unit("repx-agent.service")
            state = agent.succeed("systemctl is-enabled repx-api.service || true").strip()
            assert state == "masked", f"repx-api.service on an agent-only host is {state}"
        cluster.wait_for_agents(server, ["agent1", "agent2"])

    with subtest("a drained agent takes no new job"):
        cluster.drain(server, "agent1")
        run_id = scenarios.submit(server, naps, "nap-10s")
        scenarios.wait_for_run(server, run_id)
        (job,) = scenarios.run_jobs(server, run_id)
        cluster.ran_here(agent2, job["job_id"])
        cluster.never_ran_here(agent1, job["job_id"])
        scenarios.journal_has_job_fields(agent2, job["job_id"])
        cluster.undrain(server, "agent1")

    with subtest("an agent killed mid-run: its job is placed again and succeeds"):
        cluster.drain(server, "agent2")
        run_id = scenarios.submit(server, naps, "nap-30s")
        cluster.wait_running_on(server, "agent1")
        cluster.undrain(server, "agent2")
        agent1.crash()
        scenarios.wait_for_run(server, run_id, timeout=300)
        (job,) = scenarios.run_jobs(server, run_id)
        assert job["tries"] >= 2, f"the job was not placed again: {job}"
        cluster.ran_here(agent2, job["job_id"])
        assert cluster.agents(server)["agent1"]["state"] == "lost"
  '';
}
