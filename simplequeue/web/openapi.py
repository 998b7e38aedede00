"""The OpenAPI document of the HTTP API (`GET /openapi.json`): every endpoint, its
parameters, its body and its answers, for clients to generate code from."""

from __future__ import annotations

from typing import Any

from simplequeue.durability import Durability
from simplequeue.job import JobStatus

__all__ = ["ENDPOINTS", "document"]

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}  # fmt: skip
_STATUS = {"type": "string", "enum": [s.value for s in JobStatus]}
_DEAD = {"type": "string", "enum": [s.value for s in JobStatus if s.is_dead]}


def _query(name: str, schema: dict[str, Any], text: str, *, many: bool = False) -> dict[str, Any]:
    shape = {"type": "array", "items": schema} if many else schema
    return {"name": name, "in": "query", "required": False, "schema": shape, "description": text}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], text: str = "done") -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


_JOB = {"$ref": "#/components/schemas/Job"}
_JOBS: dict[str, Any] = {"type": "object", "properties": {"jobs": {"type": "array", "items": _JOB}}}
_TIME = {"type": "string", "format": "date-time"}
_LIMIT = {"type": ["integer", "null"], "minimum": 1, "description": "null: no limit"}
_RATE = {"type": ["object", "null"], "required": ["limit", "per_seconds"], "properties": {
    "limit": {"type": "integer", "minimum": 1}, "per_seconds": {"type": "number"}}}  # fmt: skip
_UNIQUE_FOR = {
    "oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "forever"}, {"type": "null"}],
    "description": "how long the unique key stays taken from the insert: seconds, or for good",
}
_FILTERS = {
    "type": "object",
    "properties": {
        "queue": {"type": "string"},
        "status": {"oneOf": [_DEAD, {"type": "array", "items": _DEAD}]},
        "older_than": {"type": "number", "description": "seconds since the job died"},
        "limit": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}

ENDPOINTS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("post", "/jobs", "admin", "Insert a job (201; 200 with id null when its unique key is live).", {
        "requestBody": _json({"$ref": "#/components/schemas/NewJob"}),
        "responses": {"201": _ok({"type": "object"}, "inserted")}}),
    ("get", "/jobs", "read", "Live jobs by id, filtered, a page at a time.", {
        "parameters": [
            _query("queue", {"type": "string"}, "only this queue"),
            _query("status", _STATUS, "only these statuses", many=True),
            _query("unique_key", {"type": "string"}, "only this unique key"),
            _query("fingerprint", {"type": "string"}, "only this fingerprint"),
            _query("since", _TIME, "created at or after"),
            _query("worker", {"type": "string", "format": "uuid"}, "claimed by this worker"),
            _query("after", {"type": "string", "format": "uuid"}, "the last id of the page before"),
            _query("limit", {"type": "integer", "default": 50, "maximum": 10000}, "most jobs"),
        ],
        "responses": {"200": _ok({**_JOBS, "properties": {**_JOBS["properties"], "next_after": {"type": ["string", "null"]}}})}}),
    ("get", "/jobs/{job_id}", "read", "One job: live, archived or dead, with its attempts.", {
        "parameters": [_path("job_id")], "responses": {"200": _ok(_JOB), "404": _ERROR}}),
    ("post", "/jobs/{job_id}/cancel", "admin", "Cancel a pending or running job.", {
        "parameters": [_path("job_id")], "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("post", "/jobs/{job_id}/reschedule", "admin", "Move a pending job's due time.", {
        "parameters": [_path("job_id")],
        "requestBody": _json({"type": "object", "properties": {"run_at": _TIME}, "required": ["run_at"]}),
        "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("post", "/jobs/{job_id}/retry", "admin", "A pending job due now; a dead job back with fresh attempts.", {
        "parameters": [_path("job_id")], "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("post", "/unique-keys/release", "admin", "Free a unique key held over time (unique_for) before its period ends.", {
        "requestBody": _json({"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}, "additionalProperties": False}),
        "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("get", "/dlq", "read", "Dead jobs, newest first.", {
        "parameters": [_query("queue", {"type": "string"}, "only this queue"),
                       _query("status", _DEAD, "only these dead statuses", many=True),
                       _query("limit", {"type": "integer", "default": 50}, "most jobs")],
        "responses": {"200": _ok(_JOBS)}}),
    ("post", "/dlq/requeue", "admin", "Every dead job that matches back to pending.", {
        "requestBody": _json(_FILTERS), "responses": {"200": _ok({"type": "object", "properties": {"requeued": {"type": "integer"}}})}}),
    ("post", "/dlq/purge", "admin", "Delete every dead job that matches.", {
        "requestBody": _json(_FILTERS), "responses": {"200": _ok({"type": "object", "properties": {"purged": {"type": "integer"}}})}}),
    ("post", "/dlq/{job_id}/requeue", "admin", "One dead job back to pending.", {
        "parameters": [_path("job_id")], "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("post", "/dlq/{job_id}/purge", "admin", "Delete one dead job.", {
        "parameters": [_path("job_id")], "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("get", "/queues", "read", "Declared queues: paused or not, live workers.", {
        "responses": {"200": _ok({"type": "array", "items": {"$ref": "#/components/schemas/Queue"}})}}),
    ("post", "/queues/{name}/pause", "admin", "No worker claims the queue's jobs until resumed.", {
        "parameters": [_path("name")],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "until": _TIME, "reason": {"type": "string"}, "by": {"type": "string"}}}}}},
        "responses": {"200": _ok({"$ref": "#/components/schemas/Queue"})}}),
    ("post", "/queues/{name}/resume", "admin", "Lift a pause; idle workers start at once.", {
        "parameters": [_path("name")], "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("put", "/queues/{name}/limits", "admin", "Set the queue's fleet-wide limits and durability (each call sets them all).", {
        "parameters": [_path("name")],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "max_running": _LIMIT, "max_running_per_key": _LIMIT, "rate_limit": _RATE,
            "rate_limit_per_key": _RATE, "fair": {"type": "boolean", "default": False},
            "durability": {"type": "string", "enum": [mode.value for mode in Durability],
                           "default": Durability.DURABLE.value}}}}}},
        "responses": {"200": _ok({"$ref": "#/components/schemas/Queue"})}}),
    ("post", "/queues/{name}/park", "admin", "No job of the queue (or of one key) starts before a time.", {
        "parameters": [_path("name")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["until"], "properties": {
            "until": _TIME, "key": {"type": "string"}}}}}},
        "responses": {"200": _ok({"type": "object"})}}),
    ("post", "/queues/{name}/unpark", "admin", "Lift a park: the jobs may start at once.", {
        "parameters": [_path("name")],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "key": {"type": "string"}}}}}},
        "responses": {"200": _ok({"type": "object"}), "409": _ERROR}}),
    ("get", "/schedules", "read", "Every schedule the workers registered: rule, paused, last and next slot, jobs enqueued.", {
        "responses": {"200": _ok({"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}})}}),
    ("post", "/schedules/{name}/pause", "admin", "Stop enqueuing a schedule, fleet-wide, until resumed.", {
        "parameters": [_path("name")], "responses": {"200": _ok({"type": "object"}), "404": _ERROR}}),
    ("post", "/schedules/{name}/resume", "admin", "Enqueue a paused schedule again, from its next slot.", {
        "parameters": [_path("name")], "responses": {"200": _ok({"type": "object"}), "404": _ERROR}}),
    ("delete", "/schedules/{name}", "admin", "Forget a schedule no code registers any more.", {
        "parameters": [_path("name")], "responses": {"200": _ok({"type": "object"}), "404": _ERROR}}),
    ("get", "/workers", "read", "Every worker of the fleet; the leader runs the maintenance.", {
        "responses": {"200": _ok({"type": "array", "items": {"$ref": "#/components/schemas/Worker"}})}}),
    ("get", "/stats", "read", "Per queue: due, scheduled, running, retrying, dead, DLQ, oldest wait, throughput.", {
        "parameters": [_query("window", {"type": "number", "default": 300}, "seconds of throughput")],
        "responses": {"200": _ok({"type": "array", "items": {"type": "object"}})}}),
    ("get", "/events", "read", "Server-Sent Events of job transitions (inserted, started, completed, retried, failed, cancelled, dead) and progress reports (progress); the token may be ?token=.", {
        "parameters": [_query("queue", {"type": "string"}, "only this queue"),
                       _query("job", {"type": "string", "format": "uuid"}, "only this job")],
        "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}}}),
    ("get", "/metrics", "read", "Prometheus metrics of the queue's tables.", {
        "responses": {"200": {"description": "exposition text", "content": {"text/plain": {}}}}}),
]  # fmt: skip
"""Method, path, scope, summary, and the rest of each operation."""


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, scope, summary, operation in ENDPOINTS:
        responses = {
            **operation.get("responses", {}),
            "400": _ERROR,
            "401": _ERROR,
            **({"403": _ERROR} if scope == "admin" else {}),
        }
        paths.setdefault(path, {})[method] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "x-scope": scope,
            **{k: v for k, v in operation.items() if k != "responses"},
            "responses": responses,
        }
    job_properties = {
        "id": {"type": "string", "format": "uuid"},
        "queue": {"type": "string"},
        "data": {},
        "status": _STATUS,
        "priority": {"type": "integer"},
        "attempt": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "run_at": _TIME,
        "last_error": {"type": ["string", "null"]},
        "worker_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
        "result": {"description": "what a successful attempt returned (any JSON; null: none)"},
        "progress": {"description": "the latest progress reported (any JSON; null: none)"},
        "progress_message": {"type": ["string", "null"]},
        "progress_at": {"anyOf": [_TIME, {"type": "null"}]},
        "unique_for": _UNIQUE_FOR,
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "simplequeue", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Job": {"type": "object", "properties": job_properties},
                "NewJob": {
                    "type": "object",
                    "required": ["queue", "data"],
                    "properties": {
                        "queue": {"type": "string"},
                        "data": {},
                        "unique_key": {"type": "string"},
                        "fingerprint": {"type": "string"},
                        "concurrency_key": {"type": "string"},
                        "run_at": _TIME,
                        "max_attempts": {"type": "integer", "minimum": 1},
                        "priority": {"type": "integer"},
                        "timeout": {"type": "number"},
                        "unique_for": _UNIQUE_FOR,
                    },
                    "additionalProperties": False,
                },
                "Queue": {"type": "object"},
                "Schedule": {"type": "object"},
                "Worker": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "host": {"type": "string"},
                        "pid": {"type": "integer"},
                        "version": {"type": "string"},
                        "queues": {"type": "array", "items": {"type": "string"}},
                        "started_at": _TIME,
                        "heartbeat_at": _TIME,
                        "alive": {"type": "boolean"},
                        "stopping_at": {"anyOf": [_TIME, {"type": "null"}]},
                        "running": {"type": "integer"},
                        "leader": {
                            "type": "boolean",
                            "description": "holds the maintenance lease: runs the reaper "
                            "and the janitor",
                        },
                    },
                },
            },
        },
    }
