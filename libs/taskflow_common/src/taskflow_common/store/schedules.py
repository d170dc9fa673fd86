"""Schedule SQL for clients: create, read, list, change, pause/resume, delete, run now.

:func:`create` and :func:`replace` take a validated :class:`ScheduleSpec`. The dispatcher's
tick pass lives in :mod:`taskflow_common.store.schedule_ticks`: one transaction locks the
due schedules (``FOR UPDATE SKIP LOCKED``: two dispatchers never take the same one),
inserts one task per tick with ``ON CONFLICT (schedule, scheduled_for) DO NOTHING`` (a
replayed tick cannot make a second task), stores the next fire times, and commits. Each
tick's task is a complete task row, as
:func:`taskflow_common.store.submissions.submit` makes it (``queued``, due now, pending
dispatch, so the outbox publishes it), plus ``schedule`` and ``scheduled_for``.

Errors: :class:`~taskflow_common.errors.NotFoundError` for an unknown name,
:class:`~taskflow_common.errors.ConflictError` (code ``schedule_exists``) for a name in use.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from taskflow_common.cadence import Cadence
from taskflow_common.errors import ConflictError, InvalidCursor, NotFoundError
from taskflow_common.store.rows import TASK_COLUMNS, rfc3339
from taskflow_common.subjects import Priority
from taskflow_common.ticks import Policy

CHANNEL = "taskflow_schedules"
"""LISTEN channel; migration 0005 notifies it when a client creates or changes a schedule."""
MAX_LIST_LIMIT = 200
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""A schedule's name (the table's CHECK): what ``/api/v1/schedules/{name}`` accepts."""
SCHEDULE_EXISTS = "schedule_exists"
"""Problem code of :func:`create` for a name already in use (409)."""

_COLUMNS = (
    "s.name, s.task_type, s.payload, s.priority, s.tags, s.max_attempts, s.timeout_s, "
    "s.cron, s.timezone, s.every_s, s.missed, s.catch_up_max, s.overlap, s.paused, "
    "s.next_fire_at, s.last_fire_at, s.last_task_id, s.version, s.created_at, s.updated_at"
)
SCHEDULE_COLUMNS = _COLUMNS + ", t.status AS last_run_status"
"""SELECT list of a schedule row as clients see it (FROM schedules s LEFT JOIN tasks t)."""
_FROM = "FROM schedules s LEFT JOIN tasks t ON t.id = s.last_task_id"


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule definition (what a client sends, normalised).

    The task template: ``task_type``, ``payload`` (any JSON value the caller checked with
    :func:`~taskflow_common.spec.json_problems`), ``priority``, ``tags``,
    ``max_attempts`` (1..100, None: the dispatcher's ``WORKER_MAX_ATTEMPTS`` when a tick
    fires), ``timeout_s`` (> 0 or None). ``cadence`` from
    :meth:`~taskflow_common.cadence.Cadence.parse`; ``policy`` with ``catch_up_max``
    1..1000 (the table checks it).
    """

    name: str
    task_type: str
    cadence: Cadence
    payload: Any = field(default_factory=dict)
    priority: Priority = "normal"
    tags: Mapping[str, str] | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    policy: Policy = field(default_factory=Policy)
    paused: bool = False


def cadence_of(row: Mapping[str, Any]) -> Cadence:
    """Parse the cadence stored in a schedule row (``cron``/``timezone`` or ``every_s``)."""
    if row["cron"] is not None:
        return Cadence.parse(cron=row["cron"], timezone=row["timezone"])
    return Cadence.parse(every=row["every_s"])


def spec_of(row: Mapping[str, Any]) -> ScheduleSpec:
    """Rebuild the :class:`ScheduleSpec` of a stored row (e.g. to apply a PATCH to it)."""
    return ScheduleSpec(
        name=row["name"],
        task_type=row["task_type"],
        cadence=cadence_of(row),
        payload=row["payload"],
        priority=row["priority"],
        tags=row["tags"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        policy=Policy(row["missed"], row["catch_up_max"], row["overlap"]),
        paused=row["paused"],
    )


def every_text(seconds: float) -> str:
    """Render an interval as the API shows it: ``30s``, ``90s``, ``1.5s``."""
    return f"{seconds:g}s"


def schedule_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Public JSON object of a schedule row (:data:`SCHEDULE_COLUMNS`), timestamps RFC 3339.

    ``last_run_status`` is the status of the last task a tick (or run-now) made, None
    before the first one or once the pruner deleted it.
    """
    every_s = row["every_s"]
    return {
        "name": row["name"],
        "task": {
            "type": row["task_type"],
            "payload": row["payload"],
            "priority": row["priority"],
            "tags": row["tags"],
            "max_attempts": row["max_attempts"],
            "timeout_s": row["timeout_s"],
        },
        "cron": row["cron"],
        "timezone": row["timezone"] if row["cron"] is not None else None,
        "every": every_text(every_s) if every_s is not None else None,
        "every_s": every_s,
        "missed": row["missed"],
        "catch_up_max": row["catch_up_max"],
        "overlap": row["overlap"],
        "paused": row["paused"],
        "next_fire_at": rfc3339(row["next_fire_at"]),
        "last_fire_at": rfc3339(row["last_fire_at"]),
        "last_task_id": str(row["last_task_id"]) if row["last_task_id"] else None,
        "last_run_status": row["last_run_status"],
        "version": row["version"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }


def _definition(spec: ScheduleSpec) -> tuple[Any, ...]:
    """$2..$14 of the INSERT/UPDATE statements below."""
    c, p = spec.cadence, spec.policy
    return (
        spec.task_type,
        spec.payload,
        spec.priority,
        dict(spec.tags) if spec.tags else {},
        spec.max_attempts,
        spec.timeout_s,
        c.cron,
        c.timezone,
        c.every_s,
        p.missed,
        p.catch_up_max,
        p.overlap,
        spec.paused,
    )


_CREATE = f"""
WITH s AS (
    INSERT INTO schedules (name, task_type, payload, priority, tags, max_attempts, timeout_s,
                           cron, timezone, every_s, missed, catch_up_max, overlap, paused,
                           next_fire_at)
    VALUES ($1, $2, COALESCE($3::jsonb, 'null'::jsonb), $4, $5, $6, $7, $8, $9, $10, $11, $12,
            $13, $14, $15)
    ON CONFLICT (name) DO NOTHING
    RETURNING *
)
SELECT {_COLUMNS}, NULL::text AS last_run_status FROM s
"""  # noqa: S608 - constant columns; values are parameters

_NOW = "SELECT statement_timestamp()"


async def db_now(conn: asyncpg.Connection) -> dt.datetime:
    """Return the database clock (the clock every tick is measured by)."""
    now: dt.datetime = await conn.fetchval(_NOW)
    return now


async def create(
    conn: asyncpg.Connection, spec: ScheduleSpec, *, now: dt.datetime | None = None
) -> asyncpg.Record:
    """Store a new schedule; its first tick is ``spec.cadence.first_tick(now)``.

    ``now`` defaults to the database clock. Returns the row (:data:`SCHEDULE_COLUMNS`).
    Raises :class:`ConflictError` (``schedule_exists``) when the name is taken; then
    nothing is stored or changed.
    """
    at = now if now is not None else await db_now(conn)
    row = await conn.fetchrow(_CREATE, spec.name, *_definition(spec), spec.cadence.first_tick(at))
    if row is None:
        raise ConflictError(SCHEDULE_EXISTS, f"a schedule named {spec.name!r} already exists")
    return row


_GET = f"SELECT {SCHEDULE_COLUMNS} {_FROM} WHERE s.name = $1"
_LOCK = f"SELECT {_COLUMNS} FROM schedules s WHERE s.name = $1 FOR UPDATE"  # noqa: S608


async def get(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    """Return the schedule ``name`` (:data:`SCHEDULE_COLUMNS`); raise NotFoundError."""
    row = await conn.fetchrow(_GET, name)
    if row is None:
        raise NotFoundError(f"schedule {name!r} not found")
    return row


async def lock(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    """Lock and return the schedule ``name`` (inside a transaction); raise NotFoundError.

    Waits at most for a tick pass that holds the row (milliseconds).
    """
    row = await conn.fetchrow(_LOCK, name)
    if row is None:
        raise NotFoundError(f"schedule {name!r} not found")
    return row


@dataclass(frozen=True, slots=True)
class Page:
    """Schedules by name; ``next_cursor`` is None on the last page."""

    rows: Sequence[asyncpg.Record]
    next_cursor: str | None


CURSOR_PATTERN = r"^~[A-Za-z0-9_.:-]{1,128}$"
"""What a :class:`Page` cursor looks like: ``~`` and the name the next page starts after.

Every text that matches decodes (a cursor is a position, not a credential: one made by
hand gives the page after the name it holds), so the OpenAPI document can state exactly
what the API accepts.
"""
_CURSOR = re.compile(CURSOR_PATTERN)


def _encode(name: str) -> str:
    return f"~{name}"


def decode_cursor(cursor: str) -> str:
    """Return the schedule name a :class:`Page` cursor continues after.

    Raises :class:`~taskflow_common.errors.InvalidCursor` for any text that does not match
    :data:`CURSOR_PATTERN` (the name must be one a schedule can have: a ``\\x00`` would
    otherwise reach Postgres).
    """
    if not _CURSOR.match(cursor):
        raise InvalidCursor("cursor is not one this API returned")
    return cursor[1:].rstrip("\n")  # `$` admits one trailing newline, as in the document


async def list_schedules(
    conn: asyncpg.Connection,
    *,
    paused: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Return schedules ordered by name, optionally only (un)paused; keyset pages.

    ``limit`` 1..200 (``ValueError`` otherwise); a damaged ``cursor`` raises
    :class:`~taskflow_common.errors.InvalidCursor`.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIST_LIMIT}")
    after = decode_cursor(cursor) if cursor is not None else None
    rows = await conn.fetch(
        f"SELECT {SCHEDULE_COLUMNS} {_FROM} "
        "WHERE ($1::bool IS NULL OR s.paused = $1) AND ($2::text IS NULL OR s.name > $2) "
        "ORDER BY s.name LIMIT $3",
        paused,
        after,
        limit + 1,
    )
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], _encode(rows[limit - 1]["name"]))


_REPLACE = f"""
WITH s AS (
    UPDATE schedules
       SET task_type = $2, payload = COALESCE($3::jsonb, 'null'::jsonb), priority = $4,
           tags = $5, max_attempts = $6, timeout_s = $7, cron = $8, timezone = $9,
           every_s = $10, missed = $11, catch_up_max = $12, overlap = $13, paused = $14,
           next_fire_at = COALESCE($15, next_fire_at),
           version = version + 1, updated_at = now()
     WHERE name = $1
 RETURNING *
)
SELECT {_COLUMNS}, t.status AS last_run_status
  FROM s LEFT JOIN tasks t ON t.id = s.last_task_id
"""  # noqa: S608 - constant columns; values are parameters


async def replace(
    conn: asyncpg.Connection, spec: ScheduleSpec, *, next_fire_at: dt.datetime | None = None
) -> asyncpg.Record:
    """Overwrite the definition of ``spec.name``; return the new row.

    ``next_fire_at`` None keeps the stored next tick (the cadence did not change); pass
    ``spec.cadence.first_tick(now)`` when it did. Pause and resume go through here too:
    a resumed schedule keeps its next fire time, so the ticks it missed while paused
    follow its missed-tick policy. Call after :func:`lock` in the same transaction to
    apply a change to the current row. Raises NotFoundError.
    """
    row = await conn.fetchrow(_REPLACE, spec.name, *_definition(spec), next_fire_at)
    if row is None:
        raise NotFoundError(f"schedule {spec.name!r} not found")
    return row


async def delete(conn: asyncpg.Connection, name: str) -> None:
    """Delete the schedule ``name``; its tasks stay (and keep its name). Raises NotFoundError."""
    if await conn.fetchval("DELETE FROM schedules WHERE name = $1 RETURNING 1", name) is None:
        raise NotFoundError(f"schedule {name!r} not found")


TASK_COLUMNS_WITH_TICK = TASK_COLUMNS
"""A task row with the schedule and tick it belongs to (every task view has them now)."""

# A run-now task: the template of the locked schedule, its tick the statement's clock.
_RUN_NOW = f"""
WITH t AS (
    INSERT INTO tasks (id, type, payload, priority, status, max_attempts, timeout_s, tags,
                       trace_parent, run_at, schedule, scheduled_for)
    SELECT $2, s.task_type, s.payload, s.priority, 'queued',
           COALESCE(s.max_attempts, $3), s.timeout_s, s.tags, $4, now(), s.name,
           clock_timestamp()
      FROM schedules s WHERE s.name = $1
    ON CONFLICT (schedule, scheduled_for) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING {TASK_COLUMNS_WITH_TICK}
), s AS (
    UPDATE schedules SET last_task_id = t.id, last_fire_at = t.scheduled_for
      FROM t WHERE schedules.name = $1
)
SELECT * FROM t
"""  # noqa: S608 - constant columns; values are parameters


async def run_now(
    conn: asyncpg.Connection,
    name: str,
    *,
    default_max_attempts: int,
    trace_parent: str | None = None,
) -> asyncpg.Record:
    """Create one task from the schedule's template now, whatever its cadence and policies.

    The task's ``scheduled_for`` is the moment it was made (the schedule's
    ``last_fire_at`` and ``last_task_id`` follow it, so overlap policies see the run);
    the stored next tick is unchanged, and a paused schedule runs too. Returns the task
    row (:data:`TASK_COLUMNS_WITH_TICK`). Raises NotFoundError. Runs in a transaction of
    its own, or as a savepoint of the caller's.
    """
    async with conn.transaction():
        await lock(conn, name)
        for _ in range(3):  # a tick at the very same microsecond: take the next one
            row = await conn.fetchrow(
                _RUN_NOW, name, uuid.uuid4(), default_max_attempts, trace_parent
            )
            if row is not None:
                return row
    raise ConflictError("invalid_state", f"schedule {name!r}: could not pick a tick time")
