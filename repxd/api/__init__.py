"""The HTTP API: runs, jobs, logs, agents, health, metrics and the agents' protocol."""
