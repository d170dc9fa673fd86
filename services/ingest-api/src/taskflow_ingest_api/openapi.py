"""The ingest API's OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json``.

Hand-written next to the code it describes: the request schemas state the same limits
as :mod:`taskflow_ingest_api.validation` (imported from there), the response schemas
the JSON of :mod:`taskflow_common.store.rows`. A schemathesis run against the real
process in the test suite (``tests/e2e/test_openapi.py``) keeps the two true to each
other: no 5xx, and every status code, content type, header and body as documented.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from taskflow_common.spec import (
    MAX_DELAY_MS,
    MAX_TAGS,
    MAX_TIMEOUT_S,
    TAG_KEY_CHARS,
    TAG_VALUE_CHARS,
    TYPE_PATTERN,
)
from taskflow_common.store.rows import EXECUTION_STATUSES, TASK_FIELDS, TASK_STATUSES
from taskflow_common.store.submissions import MAX_BATCH
from taskflow_common.store.tasks import MAX_LIST_LIMIT
from taskflow_common.subjects import PRIORITIES
from taskflow_ingest_api.validation import DEFAULT_LIST_LIMIT, RFC3339_PATTERN

API = "/api/v1"

PROBLEM_CODES = (
    "bad_request",
    "invalid_json",
    "invalid_id",
    "invalid_cursor",
    "not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "invalid_state",
    "payload_too_large",
    "unsupported_media_type",
    "validation_error",
    "internal_error",
    "unavailable",
)
"""Every ``code`` a problem document of this API can carry."""

_JSON = "application/json"
_PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


_DATE_TIME = {"type": "string", "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}

_SCHEMAS: dict[str, Any] = {
    "TaskSpec": {
        "type": "object",
        "description": "What to run. `null` counts as absent for the optional fields; "
        "integers are written without a fraction (3, not 3.0).",
        "required": ["type"],
        "additionalProperties": False,
        # run_at and delay_ms exclude each other (unless one of them is null).
        "not": {
            "required": ["run_at", "delay_ms"],
            "properties": {"run_at": {"type": "string"}, "delay_ms": {"type": "number"}},
        },
        "properties": {
            "type": {
                "type": "string",
                "pattern": TYPE_PATTERN.pattern,
                "description": "Handler name, 1..128 characters of A-Z a-z 0-9 _ . : -",
            },
            "payload": {"description": "Any JSON value (default {}); jsonb-storable."},
            "priority": {"enum": list(PRIORITIES), "default": "normal"},
            "max_attempts": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 100,
                "description": "Attempts before the task fails (default WORKER_MAX_ATTEMPTS).",
            },
            "run_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "pattern": RFC3339_PATTERN,
                "description": "RFC 3339 time of the first run; a past time means now. "
                "Not together with delay_ms.",
            },
            "delay_ms": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": MAX_DELAY_MS,
                "description": "Run no earlier than this many milliseconds after submit.",
            },
            "timeout_s": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": MAX_TIMEOUT_S,
                "description": "Seconds one attempt may run (default WORKER_TASK_TIMEOUT).",
            },
            "tags": {
                "type": ["object", "null"],
                "maxProperties": MAX_TAGS,
                "propertyNames": {"pattern": f"^[^:\u0000]{{1,{TAG_KEY_CHARS}}}$"},
                "additionalProperties": {
                    "type": "string",
                    "pattern": f"^[^\u0000]{{0,{TAG_VALUE_CHARS}}}$",
                },
                "description": "Free-form string map, filterable with ?tag=key:value.",
            },
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["tasks"],
        "additionalProperties": False,
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": _ref("BatchItem"),
            }
        },
    },
    "Task": {
        "type": "object",
        # The public fields (store.rows) plus the scheduling fields the API adds.
        "required": [*TASK_FIELDS, "failed_attempts", "run_at", "timeout_s", "tags"],
        "properties": {
            "id": _UUID,
            "type": {"type": "string"},
            "payload": {"description": "The submitted JSON value."},
            "priority": {"enum": list(PRIORITIES)},
            "status": {"enum": list(TASK_STATUSES)},
            "attempts": {"type": "integer", "minimum": 0, "description": "Runs started."},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            "version": {"type": "integer", "minimum": 1},
            "last_error": {"type": ["string", "null"]},
            "result": {"description": "The handler's JSON result once completed, else null."},
            "created_at": _DATE_TIME,
            "updated_at": _DATE_TIME,
            "started_at": _nullable(_DATE_TIME),
            "finished_at": _nullable(_DATE_TIME),
            "failed_attempts": {
                "type": "integer",
                "minimum": 0,
                "description": "Attempts counted against max_attempts.",
            },
            "run_at": {**_DATE_TIME, "description": "When the task is (or was) due."},
            "timeout_s": {"type": ["number", "null"]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Execution": {
        "type": "object",
        "required": [
            "id",
            "task_id",
            "attempt",
            "status",
            "worker_id",
            "error",
            "started_at",
            "finished_at",
            "duration_ms",
        ],
        "properties": {
            "id": _UUID,
            "task_id": _UUID,
            "attempt": {"type": "integer", "minimum": 1},
            "status": {"enum": list(EXECUTION_STATUSES)},
            "worker_id": {"type": "string"},
            "error": {"type": ["string", "null"]},
            "started_at": _DATE_TIME,
            "finished_at": _nullable(_DATE_TIME),
            "duration_ms": {"type": ["number", "null"], "minimum": 0},
        },
    },
    "TaskEvent": {
        "description": "One Server-Sent Event (per-event schema): `state` carries a Task, "
        "`attempt` an Execution, as JSON text in `data`.",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"enum": ["state", "attempt"]},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
        "oneOf": [
            {
                "properties": {
                    "event": {"const": "state"},
                    "data": {"contentSchema": _ref("Task")},
                }
            },
            {
                "properties": {
                    "event": {"const": "attempt"},
                    "data": {"contentSchema": _ref("Execution")},
                }
            },
        ],
    },
    "TaskEnvelope": {
        "type": "object",
        "required": ["task"],
        "properties": {"task": _ref("Task")},
    },
    "TaskPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Task")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["task", "created"],
                    "properties": {
                        "task": _ref("Task"),
                        "created": {
                            "type": "boolean",
                            "description": "false: an idempotency_key replayed this task",
                        },
                    },
                },
            }
        },
    },
    "ExecutionList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Execution")}},
    },
    "Check": {
        "type": "object",
        "required": ["ok"],
        "properties": {
            "ok": {"type": "boolean"},
            "latency_ms": {"type": "number", "minimum": 0},
            "error": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "checks": {
                "type": "object",
                "required": ["postgres", "nats", "events"],
                "properties": {
                    "postgres": _ref("Check"),
                    "nats": _ref("Check"),
                    "events": {
                        "type": "object",
                        "required": ["ok", "waiters"],
                        "description": "The LISTEN connection waking ?wait and /events "
                        "requests, and how many are parked on it.",
                        "properties": {
                            "ok": {"type": "boolean"},
                            "waiters": {"type": "integer", "minimum": 0},
                        },
                    },
                },
            },
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ready"}},
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `code` is the stable machine-readable name.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"enum": list(PROBLEM_CODES)},
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {
                            "type": "string",
                            "description": "e.g. priority, payload.a[2], tasks[3].type, limit",
                        },
                        "message": {"type": "string"},
                    },
                },
            },
            "index": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Batch only: the first bad item.",
            },
        },
    },
}
# A batch item: TaskSpec's members plus its own key (and no other member).
_SCHEMAS["BatchItem"] = copy.deepcopy(_SCHEMAS["TaskSpec"])
_SCHEMAS["BatchItem"]["description"] = "A TaskSpec plus its own optional idempotency key."
_SCHEMAS["BatchItem"]["properties"]["idempotency_key"] = {
    "type": ["string", "null"],
    "pattern": "^[\\x20-\\x7e]{1,255}$",
    "description": "Same semantics as the Idempotency-Key header of a single submit.",
}

_HEADERS: dict[str, Any] = {
    "X-Request-Id": {
        "description": "The client's X-Request-Id if usable, else a fresh 32-hex id.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"},
    },
    "Location": {
        "description": "The task's URL.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "Present (true) when an Idempotency-Key replayed an earlier task.",
        "schema": {"const": "true"},
    },
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
}

_PROBLEM_TEXT = {
    400: "Malformed: invalid_json, invalid_id, invalid_cursor, bad_request",
    404: "not_found",
    409: "Conflict: invalid_state or idempotency_key_reused",
    413: "payload_too_large",
    415: "unsupported_media_type (application/json, UTF-8, only)",
    422: "validation_error; `errors` names each field",
    500: "internal_error",
    503: "unavailable: Postgres cannot be reached; retry later",
}


def _request_id() -> dict[str, Any]:
    return {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}


def _problems(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in (*statuses, 500, 503):
        headers = _request_id()
        if status == 503:
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        out[str(status)] = {
            "description": _PROBLEM_TEXT[status],
            "headers": headers,
            "content": {_PROBLEM: {"schema": _ref("Problem")}},
        }
    return out


def _ok(schema: str, description: str, status: int = 200, **headers: Any) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "headers": {**_request_id(), **headers},
            "content": {_JSON: {"schema": _ref(schema)}},
        }
    }


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The task's id (canonical UUID form, else 400 invalid_id).",
}

_BODY_TOO_LARGE = (413, 415)


def _paths() -> dict[str, Any]:
    tasks = f"{API}/tasks"
    one = f"{tasks}/{{task_id}}"
    return {
        tasks: {
            "post": {
                "operationId": "submitTask",
                "summary": "Submit a task",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
                        "description": "Same key and body again: the first task, 200.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("TaskSpec")}},
                },
                "responses": {
                    **_ok(
                        "TaskEnvelope",
                        "Created",
                        201,
                        Location={"$ref": "#/components/headers/Location"},
                    ),
                    **_ok(
                        "TaskEnvelope",
                        "Replayed: this Idempotency-Key created the task before",
                        200,
                        Location={"$ref": "#/components/headers/Location"},
                        **{
                            "Idempotent-Replayed": {
                                "$ref": "#/components/headers/Idempotent-Replayed"
                            }
                        },
                    ),
                    **_problems(400, 409, *_BODY_TOO_LARGE, 422),
                },
            },
            "get": {
                "operationId": "listTasks",
                "summary": "List tasks, newest first, one keyset page at a time",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"enum": list(TASK_STATUSES)}},
                    {
                        "name": "type",
                        "in": "query",
                        "schema": {"type": "string", "pattern": TYPE_PATTERN.pattern},
                    },
                    {"name": "priority", "in": "query", "schema": {"enum": list(PRIORITIES)}},
                    {
                        "name": "tag",
                        "in": "query",
                        "style": "form",
                        "explode": True,
                        "description": "key:value (the key ends at the first ':'); repeat to "
                        "require several tags (AND).",
                        "schema": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "pattern": f"^[^:\u0000]{{1,{TAG_KEY_CHARS}}}:"
                                f"[^\u0000]{{0,{TAG_VALUE_CHARS}}}$",
                            },
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_LIMIT,
                            "default": DEFAULT_LIST_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "next_cursor of the previous page (opaque; any other "
                        "value is 400 invalid_cursor).",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    },
                ],
                "responses": {
                    **_ok("TaskPage", "One page; next_cursor is null on the last"),
                    **_problems(400, 422),
                },
            },
        },
        f"{tasks}/batch": {
            "post": {
                "operationId": "submitBatch",
                "summary": f"Submit 1..{MAX_BATCH} tasks in one transaction (all or none)",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    **_ok("BatchResult", "Created (or replayed), in request order", 201),
                    **_problems(400, 409, *_BODY_TOO_LARGE, 422),
                },
            }
        },
        one: {
            "get": {
                "operationId": "getTask",
                "summary": "Read a task; with ?wait, once it is finished (long poll)",
                "parameters": [
                    _TASK_ID,
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Up to 60s (e.g. 500ms, 30s): answer as soon as the "
                        "task is completed, failed or cancelled, or when the wait ends with "
                        "the state at that moment. A deployment may cut long waits shorter "
                        "(LONG_POLL_MAX_S); ask again while the task is not finished.",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,6}(ms|s)$"},
                    },
                ],
                "responses": {**_ok("TaskEnvelope", "The task"), **_problems(400, 404, 422)},
            }
        },
        f"{one}/events": {
            "get": {
                "operationId": "streamTaskEvents",
                "summary": "The task's state changes and attempts as Server-Sent Events",
                "description": "`event: state` (data: Task) first and on each change, "
                "`event: attempt` (data: Execution) per attempt and change; ends after a "
                "terminal state; `: keep-alive` comments every 15 s when idle.",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": {
                        "description": "The event stream",
                        "headers": _request_id(),
                        "content": {"text/event-stream": {"schema": _ref("TaskEvent")}},
                    },
                    **_problems(400, 404),
                },
            }
        },
        f"{one}/executions": {
            "get": {
                "operationId": "listExecutions",
                "summary": "The task's attempts, by attempt number",
                "parameters": [_TASK_ID],
                "responses": {**_ok("ExecutionList", "The attempts"), **_problems(400, 404)},
            }
        },
        f"{one}/cancel": {
            "post": {
                "operationId": "cancelTask",
                "summary": "Cancel a queued, retrying or running task",
                "description": "Queued/retrying: cancelled at once, never runs. Processing: "
                "the handler is stopped within a second and its attempt recorded cancelled. "
                "Terminal: 409 invalid_state.",
                "parameters": [_TASK_ID],
                "responses": {
                    **_ok("TaskEnvelope", "The cancelled task"),
                    **_problems(400, 404, 409),
                },
            }
        },
        f"{one}/retry": {
            "post": {
                "operationId": "retryTask",
                "summary": "Queue a failed or cancelled task again with a fresh attempt budget",
                "parameters": [_TASK_ID],
                "responses": {
                    **_ok("TaskEnvelope", "The queued task"),
                    **_problems(400, 404, 409),
                },
            }
        },
        f"{API}/health": {
            "get": {
                "operationId": "health",
                "summary": "Dependency states (always 200)",
                "responses": _ok("Health", "ok or degraded, with each check"),
            }
        },
        f"{API}/ready": {
            "get": {
                "operationId": "ready",
                "summary": "200 when Postgres answers, else 503",
                "responses": {**_ok("Ready", "Ready"), **_problems()},
            }
        },
        f"{API}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "headers": _request_id(),
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "headers": _request_id(),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TaskFlow ingest API",
            "version": "1",
            "description": "Submit, inspect, await, cancel and retry tasks. Every error is "
            "application/problem+json with a stable `code`.",
        },
        "servers": [{"url": "/"}],
        "paths": _paths(),
        "components": {"schemas": _SCHEMAS, "headers": _HEADERS},
    }


def document() -> dict[str, Any]:
    """Return a copy of the OpenAPI 3.1 document (a plain JSON-able dict)."""
    return copy.deepcopy(_document())
