"""Prometheus metrics of each role, each in its own registry, and a small /metrics server."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("repx_api_requests", "API requests by route, method and status code",
                                ["route", "method", "code"], registry=self.registry)
        self.latency = Histogram("repx_api_request_duration_seconds", "API request latency by route", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("repx_jobs", "Jobs in the store by state", ["state"], registry=self.registry)
        self.ready = Gauge("repx_ready_queue_depth", "Jobs ready to be placed", registry=self.registry)
        self.dispatch = Histogram("repx_dispatch_latency_seconds", "Time from a job becoming placeable to its placement",
                                  registry=self.registry)
        self.loop = Histogram("repx_scheduler_loop_duration_seconds", "Duration of one scheduling pass", registry=self.registry,
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.retries = Counter("repx_retries", "Jobs requeued for another attempt", registry=self.registry)
        self.lost = Counter("repx_lost_attempts", "Attempts lost with their agent", registry=self.registry)
        self.placed = Counter("repx_attempts_placed", "Attempts placed on agents", registry=self.registry)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.running = Gauge("repx_agent_running_jobs", "Jobs this agent runs now", registry=self.registry)
        self.durations = Histogram("repx_job_duration_seconds", "Job run time on this agent", ["outcome"],
                                   buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600, 21600),
                                   registry=self.registry)
        self.heartbeat_age = Gauge("repx_agent_heartbeat_age_seconds", "Seconds since the last accepted heartbeat",
                                   registry=self.registry)


def exposition(*registries: CollectorRegistry) -> web.Response:
    response = web.Response(body=b"".join(generate_latest(registry) for registry in registries))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def serve_metrics(registry: CollectorRegistry, listen: str) -> web.AppRunner:
    """Serve GET /metrics on host:port."""
    host, _, port = listen.rpartition(":")
    app = web.Application()
    app.router.add_get("/metrics", lambda _request: exposition(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
