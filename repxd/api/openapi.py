"""The OpenAPI document served at /openapi.json."""

from __future__ import annotations

from .models import (
    ClaimRequest,
    HeartbeatRequest,
    RegisterRequest,
    ReportRequest,
    ReportsRequest,
    SubmitRequest,
)

_ROUTES = [
    ("get", "/v1/health", "Liveness and version", None),
    ("get", "/v1/status", "Roles, agents and job counts", None),
    ("get", "/metrics", "Prometheus metrics of the API", None),
    ("post", "/v1/runs", "Submit a run of a Lab selection", SubmitRequest),
    ("get", "/v1/runs", "Recent runs with job counts, newest first: ?limit=N (1-1000, default 100), ?before=<X-Next-Cursor of the previous page>; selections shortened to 20 entries with selection_count", None),
    ("get", "/v1/runs/{run}", "One run", None),
    ("post", "/v1/runs/{run}/cancel", "Cancel a run (owner or admin)", None),
    ("post", "/v1/runs/{run}/retry", "Requeue a run's failed, blocked and cancelled jobs (owner or admin)", None),
    ("get", "/v1/runs/{run}/jobs", "Jobs of a run", None),
    ("get", "/v1/jobs", "Jobs, filtered by ?run= and ?state=; pages of ?limit= (default 1000, at most 10,000), X-Next-Cursor is the ?after= of the next", None),
    ("get", "/v1/jobs/{job}/log", "A job's stdout (?stream=stderr), ?tail=N its last N lines (within its last 16 MiB), ?offset=BYTES from that byte on, ?follow=1 streams until it ends", None),
    ("get", "/v1/attempts", "Attempts, filtered by ?run= and ?job=; pages of ?limit= (default 1000, at most 10,000), X-Next-Cursor is the ?after= of the next", None),
    ("get", "/v1/agents", "Agents with their state and load", None),
    ("get", "/v1/hardware", "Hardware inventories per agent (?agent=NAME) and the GPUs in use", None),
    ("post", "/v1/agents", "Register an agent (agents only)", RegisterRequest),
    ("post", "/v1/agents/{agent}/heartbeat", "Extend an agent's lease; returns attempts to cancel", HeartbeatRequest),
    ("post", "/v1/agents/{agent}/claim", "Long-poll for assigned attempts", ClaimRequest),
    ("post", "/v1/agents/{agent}/reports", "Report how several attempts ended, in one call", ReportsRequest),
    ("post", "/v1/agents/{agent}/{action}", "drain or undrain an agent (admin)", None),
    ("delete", "/v1/agents/{agent}", "Forget an idle agent (admin)", None),
    ("get", "/v1/attempts/{attempt}", "What an agent needs to run an attempt", None),
    ("post", "/v1/attempts/{attempt}/report", "Report how an attempt ended", ReportRequest),
]


def openapi_document(version: str) -> dict:
    paths: dict = {}
    schemas = {}
    for method, path, summary, model in _ROUTES:
        op: dict = {"summary": summary, "responses": {"200": {"description": "OK"}, "400": {"description": "Bad request"},
                                                      "401": {"description": "No or bad token"}, "403": {"description": "Not allowed"}}}
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        if model is not None:
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schemas[model.__name__].pop("$defs", {}))
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0", "info": {"title": "repx API", "version": version}, "paths": paths,
            "components": {"schemas": schemas}}
