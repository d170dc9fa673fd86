"""The components of the ingest API's OpenAPI document: schemas and response headers.

The request schemas state the limits of :mod:`taskflow_common.spec` (imported from
there), the response schemas the JSON of :mod:`taskflow_common.store.rows`.
"""

from __future__ import annotations

import copy
from typing import Any

from taskflow_common.spec import (
    INT64_MAX,
    INT64_MIN,
    MAX_DELAY_MS,
    MAX_TAGS,
    MAX_TIMEOUT_S,
    TAG_KEY_CHARS,
    TAG_VALUE_CHARS,
    TYPE_PATTERN,
)
from taskflow_common.store.rows import (
    EXECUTION_STATUSES,
    TASK_EXTRA_FIELDS,
    TASK_FIELDS,
    TASK_STATUSES,
)
from taskflow_common.store.submissions import MAX_BATCH
from taskflow_common.subjects import PRIORITIES
from taskflow_ingest_api.validation import RFC3339_PATTERN

PROBLEM_CODES = (
    "bad_request",
    "invalid_json",
    "invalid_id",
    "invalid_cursor",
    "not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "invalid_state",
    "schedule_exists",
    "payload_too_large",
    "unsupported_media_type",
    "validation_error",
    "internal_error",
    "unavailable",
)
"""Every ``code`` a problem document of this API can carry."""


def ref(name: str) -> dict[str, str]:
    """A ``$ref`` to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``null`` added to its ``type``."""
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


_DATE_TIME = {"type": "string", "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}

_NO_NUL = {"pattern": "^[^\u0000]*$"}

SCHEMAS: dict[str, Any] = {
    "JsonbValue": {
        "description": "A JSON value Postgres jsonb can hold: no \\u0000 in any string or "
        "object key, integers within int64, finite numbers, nested at most MAX_JSON_DEPTH "
        "(default 64) levels.",
        "anyOf": [
            {"type": "string", **_NO_NUL},
            {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {"type": ["boolean", "null"]},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonbValue"}},
            {
                "type": "object",
                "propertyNames": _NO_NUL,
                "additionalProperties": {"$ref": "#/components/schemas/JsonbValue"},
            },
        ],
    },
    "TaskSpec": {
        "type": "object",
        "description": "What to run. `null` counts as absent for the optional fields; "
        "an integer may carry a zero fraction (3.0 is 3), as JSON Schema's integer allows.",
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
            "payload": {
                **ref("JsonbValue"),
                "description": "Any JSON value jsonb can hold (default {}).",
            },
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
                "items": ref("BatchItem"),
            }
        },
    },
    "Task": {
        "type": "object",
        # The public fields (store.rows) plus the scheduling fields the API adds.
        "required": [*TASK_FIELDS, *TASK_EXTRA_FIELDS],
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
            "started_at": nullable(_DATE_TIME),
            "finished_at": nullable(_DATE_TIME),
            "failed_attempts": {
                "type": "integer",
                "minimum": 0,
                "description": "Attempts counted against max_attempts.",
            },
            "run_at": {**_DATE_TIME, "description": "When the task is (or was) due."},
            "timeout_s": {"type": ["number", "null"]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "schedule": {
                "type": ["string", "null"],
                "description": "The schedule that made the task (null: submitted).",
            },
            "scheduled_for": {**nullable(_DATE_TIME), "description": "Its tick (UTC)."},
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
            "finished_at": nullable(_DATE_TIME),
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
                    "data": {"contentSchema": ref("Task")},
                }
            },
            {
                "properties": {
                    "event": {"const": "attempt"},
                    "data": {"contentSchema": ref("Execution")},
                }
            },
        ],
    },
    "TaskEnvelope": {
        "type": "object",
        "required": ["task"],
        "properties": {"task": ref("Task")},
    },
    "TaskPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": ref("Task")},
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
                        "task": ref("Task"),
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
        "properties": {"items": {"type": "array", "items": ref("Execution")}},
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
                    "postgres": ref("Check"),
                    "nats": ref("Check"),
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
SCHEMAS["BatchItem"] = copy.deepcopy(SCHEMAS["TaskSpec"])
SCHEMAS["BatchItem"]["description"] = "A TaskSpec plus its own optional idempotency key."
SCHEMAS["BatchItem"]["properties"]["idempotency_key"] = {
    "type": ["string", "null"],
    "pattern": "^[\\x20-\\x7e]{1,255}$",
    "description": "Same semantics as the Idempotency-Key header of a single submit.",
}

HEADERS: dict[str, Any] = {
    "X-Request-Id": {
        "description": "The client's X-Request-Id if usable, else a fresh 32-hex id.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"},
    },
    "Location": {
        "description": "The URL of the task (or schedule) created.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "Present (true) when an Idempotency-Key replayed an earlier task.",
        "schema": {"const": "true"},
    },
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
}
