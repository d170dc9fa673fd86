"""Row shapes of the task tables and their public JSON form.

Timestamps come from the database clock and are rendered as RFC 3339 UTC with
microseconds and a ``Z`` suffix (``2026-11-29T15:03:28.123456Z``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

TASK_STATUSES = ("queued", "processing", "retrying", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
EXECUTION_STATUSES = ("started", "succeeded", "failed", "abandoned", "interrupted", "cancelled")

# Columns returned to API clients, in the documented order.
TASK_FIELDS = (
    "id",
    "type",
    "payload",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "version",
    "last_error",
    "result",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)
EXECUTION_FIELDS = (
    "id",
    "task_id",
    "attempt",
    "status",
    "worker_id",
    "error",
    "started_at",
    "finished_at",
    "duration_ms",
)

TASK_COLUMNS = ", ".join(TASK_FIELDS) + ", failed_attempts, run_at, timeout_s, tags"
"""SELECT list for a task row (public fields plus scheduling fields)."""


def rfc3339(value: dt.datetime | None) -> str | None:
    """Render an aware datetime as RFC 3339 UTC (``...Z``); None stays None."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Public JSON object of a task row (ids as strings, timestamps RFC 3339)."""
    out: dict[str, Any] = {}
    for key in TASK_FIELDS:
        value = row[key]
        if key == "id":
            value = str(value)
        elif key.endswith("_at"):
            value = rfc3339(value)
        out[key] = value
    # Extra scheduling fields, when the row has them (documented in the OpenAPI schema).
    for key in ("failed_attempts", "run_at", "timeout_s", "tags"):
        if key in row:
            value = row[key]
            out[key] = rfc3339(value) if key == "run_at" else value
    return out


def execution_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Public JSON object of a task_executions row."""
    out: dict[str, Any] = {}
    for key in EXECUTION_FIELDS:
        value = row[key]
        if key in ("id", "task_id"):
            value = str(value)
        elif key.endswith("_at"):
            value = rfc3339(value)
        out[key] = value
    return out
