"""The schedules part of the ingest API's OpenAPI document: schemas and paths.

The request schemas state the limits of :mod:`taskflow_ingest_api.schedule_validation`
(imported from there), the response schema the JSON of
:func:`taskflow_common.store.schedules.schedule_json`. They admit what the validation
admits (schemathesis's all-checks run holds them to it), with one documented exception:
what only the server can judge (a cron expression that parses and fires, a time zone the
tz database knows, an interval from 1 s to 366 d, a PATCH that fits the stored schedule)
is answered 422, a documented answer of ``createSchedule`` and ``updateSchedule``.
"""

from __future__ import annotations

import copy
from typing import Any

from taskflow_common.cadence import MAX_EVERY_S, MIN_EVERY_S
from taskflow_common.config import DURATION_PATTERN
from taskflow_common.spec import (
    MAX_ATTEMPTS,
    MAX_TAGS,
    MAX_TIMEOUT_S,
    MIN_ATTEMPTS,
    TAG_KEY_CHARS,
    TAG_VALUE_CHARS,
    TYPE_PATTERN,
)
from taskflow_common.store.rows import TASK_STATUSES
from taskflow_common.store.schedules import CURSOR_PATTERN, MAX_LIST_LIMIT, NAME_PATTERN
from taskflow_common.subjects import PRIORITIES
from taskflow_common.ticks import MAX_CATCH_UP, MISSED_POLICIES, OVERLAP_POLICIES
from taskflow_ingest_api.openapi.paths import API, ok, problems
from taskflow_ingest_api.openapi.schemas import nullable, ref
from taskflow_ingest_api.schedule_validation import CRON_CHARS, ZONE_CHARS
from taskflow_ingest_api.validation import DEFAULT_LIST_LIMIT

_JSON = "application/json"
_DATE_TIME = {"type": "string", "format": "date-time"}
_TAGS = {
    "type": ["object", "null"],
    "maxProperties": MAX_TAGS,
    "propertyNames": {"pattern": f"^[^:\u0000]{{1,{TAG_KEY_CHARS}}}$"},
    "additionalProperties": {"type": "string", "pattern": f"^[^\u0000]{{0,{TAG_VALUE_CHARS}}}$"},
}
_TEMPLATE: dict[str, Any] = {
    "type": "object",
    "description": "The task every tick submits (max_attempts null: WORKER_MAX_ATTEMPTS "
    "when it fires; timeout_s null: WORKER_TASK_TIMEOUT).",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "pattern": TYPE_PATTERN.pattern},
        "payload": {**ref("JsonbValue"), "description": "Any JSON value (default {})."},
        "priority": {"enum": list(PRIORITIES), "default": "normal"},
        "max_attempts": {
            "type": ["integer", "null"],
            "minimum": MIN_ATTEMPTS,
            "maximum": MAX_ATTEMPTS,
        },
        "timeout_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
        "tags": _TAGS,
    },
}
_CADENCE_AND_POLICIES: dict[str, Any] = {
    "cron": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": CRON_CHARS,
        "description": "5 fields (minute hour day month weekday) or 6 (seconds first), "
        "read in `timezone`; or a macro (@hourly, @daily, ...). Not with `every`.",
        "examples": ["*/5 * * * *"],
    },
    "timezone": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": ZONE_CHARS,
        "description": "IANA zone the cron fields are read in (default UTC).",
        "examples": ["Europe/Berlin"],
    },
    "every": {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": 32, "pattern": DURATION_PATTERN},
            {"type": "number", "minimum": MIN_EVERY_S, "maximum": MAX_EVERY_S},
            {"type": "null"},
        ],
        "description": "A fixed interval from 1s to 366d: 30s, 5m, 1h, 1d or seconds. "
        "Not with `cron` or `timezone`.",
        "examples": ["30s"],
    },
    "missed": {"enum": list(MISSED_POLICIES), "description": "Ticks missed while down/paused."},
    "catch_up_max": {"type": "integer", "minimum": 1, "maximum": MAX_CATCH_UP},
    "overlap": {"enum": list(OVERLAP_POLICIES), "description": "A tick while the last run goes."},
    "paused": {"type": "boolean"},
}
_NULL = {"type": "null"}
_CRON_OR_EVERY: dict[str, Any] = {
    "oneOf": [
        {
            "required": ["cron"],
            "properties": {"cron": {"type": "string"}, "every": _NULL},
        },
        {
            "required": ["every"],
            "properties": {
                "every": {"type": ["string", "number"]},
                "cron": _NULL,
                "timezone": _NULL,
            },
        },
    ]
}
"""A new schedule has `cron` (with an optional `timezone`) or `every`, never both."""
_NOT_BOTH: dict[str, Any] = {
    "allOf": [
        {"anyOf": [{"properties": {"cron": _NULL}}, {"properties": {"every": _NULL}}]},
        {"anyOf": [{"properties": {"timezone": _NULL}}, {"properties": {"every": _NULL}}]},
    ]
}
"""A change gives `cron` (+ `timezone`) or `every`, or neither, never both."""
_TEMPLATE_CHANGE = copy.deepcopy(_TEMPLATE)
_TEMPLATE_CHANGE["type"] = ["object", "null"]
_TEMPLATE_CHANGE["required"] = []
_TEMPLATE_CHANGE["description"] = "Members given replace the stored ones."
_TEMPLATE_CHANGE["properties"]["type"] = {
    **_TEMPLATE["properties"]["type"],
    "type": ["string", "null"],
}

_CHANGE = {
    **_CADENCE_AND_POLICIES,
    "missed": {"enum": [*MISSED_POLICIES, None]},
    "catch_up_max": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CATCH_UP},
    "overlap": {"enum": [*OVERLAP_POLICIES, None]},
    "paused": {"type": ["boolean", "null"]},
}
"""A PATCH's members: null keeps the stored value."""

SCHEMAS: dict[str, Any] = {
    "ScheduleSpec": {
        "type": "object",
        "description": "A new schedule: name, task template, `cron` (+ `timezone`) or `every`.",
        "required": ["name", "task"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
            "task": _TEMPLATE,
            **_CADENCE_AND_POLICIES,
        },
        **_CRON_OR_EVERY,
    },
    "ScheduleChange": {
        "type": "object",
        "description": "PATCH: the members given replace the stored ones; a new cadence "
        "re-times the schedule from now.",
        "additionalProperties": False,
        "properties": {"task": _TEMPLATE_CHANGE, **_CHANGE},
        **_NOT_BOTH,
    },
    "Schedule": {
        "type": "object",
        "required": [
            *("name", "task", "cron", "timezone", "every", "every_s", "missed", "catch_up_max"),
            *("overlap", "paused", "next_fire_at", "last_fire_at", "last_task_id"),
            *("last_run_status", "version", "created_at", "updated_at"),
        ],
        "properties": {
            "name": {"type": "string"},
            "task": {
                "type": "object",
                "required": ["type", "payload", "priority", "tags", "max_attempts", "timeout_s"],
                "properties": {
                    "type": {"type": "string"},
                    "payload": {},
                    "priority": {"enum": list(PRIORITIES)},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "max_attempts": {"type": ["integer", "null"]},
                    "timeout_s": {"type": ["number", "null"]},
                },
            },
            "cron": {"type": ["string", "null"]},
            "timezone": {"type": ["string", "null"]},
            "every": {"type": ["string", "null"], "description": "e.g. 30s"},
            "every_s": {"type": ["number", "null"], "minimum": 1},
            "missed": {"enum": list(MISSED_POLICIES)},
            "catch_up_max": {"type": "integer"},
            "overlap": {"enum": list(OVERLAP_POLICIES)},
            "paused": {"type": "boolean"},
            "next_fire_at": {**_DATE_TIME, "description": "The next tick (past: due or held)."},
            "last_fire_at": {**nullable(_DATE_TIME), "description": "The last run's tick."},
            "last_task_id": {"type": ["string", "null"], "format": "uuid"},
            "last_run_status": {
                "enum": [*TASK_STATUSES, None],
                "description": "Status of the last run's task (null: none yet, or pruned).",
            },
            "version": {"type": "integer", "minimum": 1},
            "created_at": _DATE_TIME,
            "updated_at": _DATE_TIME,
        },
    },
    "ScheduleEnvelope": {
        "type": "object",
        "required": ["schedule"],
        "properties": {"schedule": ref("Schedule")},
    },
    "SchedulePage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": ref("Schedule")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN.pattern},
    "description": "The schedule's name.",
}
_LOCATION = {"$ref": "#/components/headers/Location"}


_MEANING = (
    "validation_error; `errors` names each field. Also for a well-formed request whose "
    "meaning only the server can check: a cron expression that does not parse or never "
    "fires, a time zone the tz database does not know, an interval outside 1s..366d, a "
    "`timezone` change for an interval schedule."
)


def _body_problems(*statuses: int) -> dict[str, Any]:
    out = problems(*statuses)
    out["422"] = {**out["422"], "description": _MEANING}
    return out


def _action(operation: str, summary: str, answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "parameters": [_NAME],
            "responses": {**answer, **problems(404)},
        }
    }


def paths() -> dict[str, Any]:
    """The schedule routes: template -> method -> operation."""
    root = f"{API}/schedules"
    one = f"{root}/{{name}}"
    return {
        root: {
            "post": {
                "operationId": "createSchedule",
                "summary": "Create a schedule (cron in a time zone, or a fixed interval)",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": ref("ScheduleSpec")}},
                },
                "responses": {
                    **ok("ScheduleEnvelope", "Created", 201, Location=_LOCATION),
                    **_body_problems(400, 409, 413, 415, 422),
                },
            },
            "get": {
                "operationId": "listSchedules",
                "summary": "List schedules by name, one keyset page at a time",
                "parameters": [
                    {"name": "paused", "in": "query", "schema": {"enum": ["true", "false"]}},
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
                        "description": "next_cursor of the previous page (else 400).",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    **ok("SchedulePage", "One page; next_cursor is null on the last"),
                    **problems(400, 422),
                },
            },
        },
        one: {
            "get": {
                "operationId": "getSchedule",
                "summary": "Read a schedule: its definition, last and next fire times, last run",
                "parameters": [_NAME],
                "responses": {**ok("ScheduleEnvelope", "The schedule"), **problems(404)},
            },
            "patch": {
                "operationId": "updateSchedule",
                "summary": "Change a schedule (merged; a new cadence re-times it)",
                "parameters": [_NAME],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": ref("ScheduleChange")}},
                },
                "responses": {
                    **ok("ScheduleEnvelope", "The changed schedule"),
                    **_body_problems(400, 404, 413, 415, 422),
                },
            },
            "delete": {
                "operationId": "deleteSchedule",
                "summary": "Delete a schedule (the tasks it made stay)",
                "parameters": [_NAME],
                "responses": {
                    "204": {
                        "description": "Deleted",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                    },
                    **problems(404),
                },
            },
        },
        f"{one}/pause": _action(
            "pauseSchedule", "Pause: no tick fires until resumed", ok("ScheduleEnvelope", "Paused")
        ),
        f"{one}/resume": _action(
            "resumeSchedule",
            "Resume: missed ticks follow the missed-tick policy",
            ok("ScheduleEnvelope", "Resumed"),
        ),
        f"{one}/run": _action(
            "runSchedule",
            "Create one task from the template now (paused or not)",
            {**ok("TaskEnvelope", "The task", 201, Location=_LOCATION), **problems(409)},
        ),
    }
