"""The paths of the ingest API's OpenAPI document: every route, its parameters and answers.

Each operation lists its success responses and, as problem+json, every 4xx it can
answer plus 500 and 503 (which every route can). Limits come from
:mod:`taskflow_common.spec` and the store, so the document and the validation agree.
"""

from __future__ import annotations

from typing import Any

from taskflow_common.spec import TAG_KEY_CHARS, TAG_VALUE_CHARS, TYPE_PATTERN
from taskflow_common.store.cursor import CURSOR_PATTERN
from taskflow_common.store.rows import TASK_STATUSES
from taskflow_common.store.submissions import MAX_BATCH
from taskflow_common.store.tasks import MAX_LIST_LIMIT
from taskflow_common.subjects import PRIORITIES
from taskflow_ingest_api.openapi.schemas import ref
from taskflow_ingest_api.validation import DEFAULT_LIST_LIMIT
from taskflow_ingest_api.wait_param import WAIT_PATTERN

API = "/api/v1"

_JSON = "application/json"
_PROBLEM = "application/problem+json"

_PROBLEM_TEXT = {
    400: "Malformed: invalid_json, invalid_id, invalid_cursor, bad_request",
    404: "not_found",
    409: "Conflict: invalid_state, idempotency_key_reused or schedule_exists",
    413: "payload_too_large",
    415: "unsupported_media_type (application/json, UTF-8, only)",
    422: "validation_error; `errors` names each field",
    500: "internal_error",
    503: "unavailable: Postgres cannot be reached; retry later",
}


def _request_id() -> dict[str, Any]:
    return {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}


def problems(*statuses: int) -> dict[str, Any]:
    """Problem+json responses for ``statuses``, plus 500 and 503 (every route has them)."""
    out: dict[str, Any] = {}
    for status in (*statuses, 500, 503):
        headers = _request_id()
        if status == 503:
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        out[str(status)] = {
            "description": _PROBLEM_TEXT[status],
            "headers": headers,
            "content": {_PROBLEM: {"schema": ref("Problem")}},
        }
    return out


def ok(schema: str, description: str, status: int = 200, **headers: Any) -> dict[str, Any]:
    """A JSON success response of component ``schema`` with X-Request-Id and ``headers``."""
    return {
        str(status): {
            "description": description,
            "headers": {**_request_id(), **headers},
            "content": {_JSON: {"schema": ref(schema)}},
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


def paths() -> dict[str, Any]:
    """The ``paths`` object: route template -> method -> operation."""
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
                    "content": {_JSON: {"schema": ref("TaskSpec")}},
                },
                "responses": {
                    **ok(
                        "TaskEnvelope",
                        "Created",
                        201,
                        Location={"$ref": "#/components/headers/Location"},
                    ),
                    **ok(
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
                    **problems(400, 409, *_BODY_TOO_LARGE, 422),
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
                        "name": "schedule",
                        "in": "query",
                        "description": "Only the tasks this schedule made (ticks and runs).",
                        "schema": {"type": "string", "pattern": TYPE_PATTERN.pattern},
                    },
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
                        "description": "next_cursor of the previous page (opaque; a value "
                        "of another shape is 400 invalid_cursor).",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    **ok("TaskPage", "One page; next_cursor is null on the last"),
                    **problems(400, 422),
                },
            },
        },
        f"{tasks}/batch": {
            "post": {
                "operationId": "submitBatch",
                "summary": f"Submit 1..{MAX_BATCH} tasks in one transaction (all or none)",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": ref("BatchRequest")}},
                },
                "responses": {
                    **ok("BatchResult", "Created (or replayed), in request order", 201),
                    **problems(400, 409, *_BODY_TOO_LARGE, 422),
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
                        "schema": {"type": "string", "pattern": WAIT_PATTERN},
                    },
                ],
                "responses": {**ok("TaskEnvelope", "The task"), **problems(400, 404, 422)},
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
                        "content": {"text/event-stream": {"schema": ref("TaskEvent")}},
                    },
                    **problems(400, 404),
                },
            }
        },
        f"{one}/executions": {
            "get": {
                "operationId": "listExecutions",
                "summary": "The task's attempts, by attempt number",
                "parameters": [_TASK_ID],
                "responses": {**ok("ExecutionList", "The attempts"), **problems(400, 404)},
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
                    **ok("TaskEnvelope", "The cancelled task"),
                    **problems(400, 404, 409),
                },
            }
        },
        f"{one}/retry": {
            "post": {
                "operationId": "retryTask",
                "summary": "Queue a failed or cancelled task again with a fresh attempt budget",
                "parameters": [_TASK_ID],
                "responses": {
                    **ok("TaskEnvelope", "The queued task"),
                    **problems(400, 404, 409),
                },
            }
        },
        f"{API}/health": {
            "get": {
                "operationId": "health",
                "summary": "Dependency states (always 200)",
                "responses": ok("Health", "ok or degraded, with each check"),
            }
        },
        f"{API}/ready": {
            "get": {
                "operationId": "ready",
                "summary": "200 when Postgres answers, else 503",
                "responses": {**ok("Ready", "Ready"), **problems()},
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
