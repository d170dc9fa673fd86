"""Row shapes of the task tables and their public JSON form.

Timestamps come from the database clock and are rendered as RFC 3339 UTC with
microseconds and a ``Z`` suffix (``2026-11-29T15:03:28.123456Z``).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal

TASK_STATUSES = ("queued", "processing", "retrying", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
DeadLetterStatus = Literal["open", "replayed", "discarded"]
DEAD_LETTER_STATUSES: tuple[DeadLetterStatus, ...] = ("open", "replayed", "discarded")
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

TASK_EXTRA_FIELDS = ("failed_attempts", "run_at", "timeout_s", "tags", "schedule", "scheduled_for")
"""Fields every task view adds after :data:`TASK_FIELDS` (``schedule``/``scheduled_for``:
the schedule and tick a task was made for, both null for tasks a client submitted)."""
TASK_COLUMNS = ", ".join(TASK_FIELDS + TASK_EXTRA_FIELDS)
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
    for key in TASK_EXTRA_FIELDS:
        if key in row:
            value = row[key]
            out[key] = rfc3339(value) if key in ("run_at", "scheduled_for") else value
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


def dead_letter_json(row: Mapping[str, Any], *, with_raw: bool = False) -> dict[str, Any]:
    """Public JSON object of a dead_letters row.

    Keys: id, task_id, type, priority, attempts, error, reason, subject, trace_id,
    status, failed_at, recorded_at, resolved_at (RFC 3339 UTC), raw_bytes (size of the
    kept raw message or null) and, with ``with_raw``, raw (base64 or null).
    """
    raw: bytes | None = row["raw"]
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "task_id": str(row["task_id"]) if row["task_id"] is not None else None,
        "type": row["type"],
        "priority": row["priority"],
        "attempts": row["attempts"],
        "error": row["error"],
        "reason": row["reason"],
        "subject": row["subject"],
        "trace_id": row["trace_id"],
        "status": row["status"],
        "failed_at": rfc3339(row["failed_at"]),
        "recorded_at": rfc3339(row["recorded_at"]),
        "resolved_at": rfc3339(row["resolved_at"]),
        "raw_bytes": len(raw) if raw is not None else None,
    }
    if with_raw:
        out["raw"] = base64.b64encode(raw).decode() if raw is not None else None
    return out


def dead_letters_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`dead_letter_json` for each row (without raw bytes)."""
    return [dead_letter_json(r) for r in rows]
