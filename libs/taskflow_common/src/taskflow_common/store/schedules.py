"""Schedule SQL: the definitions clients manage, and the dispatcher's tick pass.

Clients (the ingest API) create, read, list, change, pause, resume, delete and "run now"
schedules; :func:`create` and :func:`replace` take a validated :class:`ScheduleSpec`. The
dispatcher's schedule loop runs one pass per transaction:

1. :func:`lock_due` locks due schedules (``FOR UPDATE SKIP LOCKED``: two dispatchers never
   take the same one) and, in a second statement with a fresh snapshot, reads the state
   of each one's last task (for the overlap policy);
2. :func:`fire` inserts one task per tick, the template read from the locked row, with
   ``ON CONFLICT (schedule, scheduled_for) DO NOTHING``: a tick replayed after a crash
   between insert and commit, or a second dispatcher that raced past the lock, cannot
   make a second task;
3. :func:`advance` stores each schedule's next fire time and last tick;

and the caller commits. Each tick's task is a complete task row, as
:func:`taskflow_common.store.tasks.submit` makes it (``queued``, due now, pending
dispatch, so the outbox publishes it), plus ``schedule`` and ``scheduled_for``.

Errors: :class:`~taskflow_common.errors.NotFoundError` for an unknown name,
:class:`~taskflow_common.errors.ConflictError` (code ``schedule_exists``) for a name in use.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from taskflow_common.cadence import Cadence
from taskflow_common.errors import ConflictError, InvalidCursor, NotFoundError
from taskflow_common.store.rows import TASK_COLUMNS, TERMINAL_STATUSES, rfc3339
from taskflow_common.subjects import Priority
from taskflow_common.ticks import Policy, PreviousRun

CHANNEL = "taskflow_schedules"
"""LISTEN channel; migration 0005 notifies it when a client creates or changes a schedule."""
MAX_LIST_LIMIT = 200
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
_TERMINAL_ARRAY = "'{" + ",".join(sorted(TERMINAL_STATUSES)) + "}'::text[]"


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


def spec_of(row: Mapping[str, Any]) -> ScheduleSpec:
    """Rebuild the :class:`ScheduleSpec` of a stored row (e.g. to apply a PATCH to it)."""
    if row["cron"] is not None:
        cadence = Cadence.parse(cron=row["cron"], timezone=row["timezone"])
    else:
        cadence = Cadence.parse(every=row["every_s"])
    return ScheduleSpec(
        name=row["name"],
        task_type=row["task_type"],
        cadence=cadence,
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


def _encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def _decode(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


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
    after = _decode(cursor) if cursor is not None else None
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


TASK_COLUMNS_WITH_TICK = TASK_COLUMNS + ", schedule, scheduled_for"
"""A task row plus the schedule and tick it belongs to."""

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


# -- the tick pass ------------------------------------------------------------------------

_LOCK_DUE = f"""
SELECT s.name, s.cron, s.timezone, s.every_s, s.missed, s.catch_up_max, s.overlap,
       s.next_fire_at, s.last_task_id,
       COALESCE($2::timestamptz, statement_timestamp()) AS pass_at
  FROM schedules s
 WHERE NOT s.paused
   AND s.next_fire_at <= COALESCE($2::timestamptz, statement_timestamp())
   AND NOT (s.overlap = 'queue' AND EXISTS (
            SELECT 1 FROM tasks t
             WHERE t.id = s.last_task_id AND t.status <> ALL({_TERMINAL_ARRAY})))
 ORDER BY s.next_fire_at
 LIMIT $1
   FOR UPDATE OF s SKIP LOCKED
"""  # noqa: S608 - constant status list; values are parameters

_LAST_RUNS = "SELECT id, status, finished_at FROM tasks WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A locked due schedule: what the tick math needs.

    ``now`` is the pass's clock (the database's, or the one a test passed);
    ``previous`` the state of its last task (None: none, or pruned).
    """

    name: str
    cadence: Cadence
    policy: Policy
    next_fire_at: dt.datetime
    previous: PreviousRun | None
    now: dt.datetime


async def lock_due(
    conn: asyncpg.Connection, limit: int, *, now: dt.datetime | None = None
) -> list[DueSchedule]:
    """Lock up to ``limit`` due, unpaused schedules, oldest next tick first (in a transaction).

    Schedules whose ``queue`` tick waits for a running task are left alone. ``now``
    replaces the database clock (tests simulate time with it). Two statements: the lock,
    then the last tasks' states read with a snapshot taken after the lock, so a task
    another dispatcher committed just before is seen.
    """
    rows = await conn.fetch(_LOCK_DUE, limit, now)
    if not rows:
        return []
    ids = [r["last_task_id"] for r in rows if r["last_task_id"] is not None]
    runs = {r["id"]: r for r in await conn.fetch(_LAST_RUNS, ids)} if ids else {}
    due = []
    for r in rows:
        last = runs.get(r["last_task_id"])
        previous = (
            PreviousRun(last["status"] not in TERMINAL_STATUSES, last["finished_at"])
            if last is not None
            else None
        )
        if r["cron"] is not None:
            cadence = Cadence.parse(cron=r["cron"], timezone=r["timezone"])
        else:
            cadence = Cadence.parse(every=r["every_s"])
        due.append(
            DueSchedule(
                r["name"],
                cadence,
                Policy(r["missed"], r["catch_up_max"], r["overlap"]),
                r["next_fire_at"],
                previous,
                r["pass_at"],
            )
        )
    return due


@dataclass(frozen=True, slots=True)
class Tick:
    """One task to create: schedule ``name``, tick ``scheduled_for``, its trace context."""

    name: str
    scheduled_for: dt.datetime
    trace_parent: str | None = None


_FIRE = """
INSERT INTO tasks (id, type, payload, priority, status, max_attempts, timeout_s, tags,
                   trace_parent, run_at, schedule, scheduled_for)
SELECT u.id, s.task_type, s.payload, s.priority, 'queued', COALESCE(s.max_attempts, $5),
       s.timeout_s, s.tags, u.trace_parent, now(), s.name, u.scheduled_for
  FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
       WITH ORDINALITY AS u(id, name, scheduled_for, trace_parent, n)
  JOIN schedules s ON s.name = u.name
 ORDER BY u.n
ON CONFLICT (schedule, scheduled_for) WHERE schedule IS NOT NULL DO NOTHING
RETURNING id, schedule, scheduled_for
"""


async def fire(
    conn: asyncpg.Connection, ticks: Sequence[Tick], *, default_max_attempts: int
) -> list[asyncpg.Record]:
    """Insert one task per tick (one statement); return ``(id, schedule, scheduled_for)``
    of those inserted, in order. A tick that already has its task inserts nothing.

    Call in the transaction that locked the schedules (the template is read from them).
    """
    if not ticks:
        return []
    return list(
        await conn.fetch(
            _FIRE,
            [uuid.uuid4() for _ in ticks],
            [t.name for t in ticks],
            [t.scheduled_for for t in ticks],
            [t.trace_parent for t in ticks],
            default_max_attempts,
        )
    )


@dataclass(frozen=True, slots=True)
class Advance:
    """Store ``next_fire_at`` for ``name``; ``last_tick`` the newest tick fired (or None)."""

    name: str
    next_fire_at: dt.datetime
    last_tick: dt.datetime | None = None


_ADVANCE = """
UPDATE schedules AS s
   SET next_fire_at = u.next_fire_at,
       last_fire_at = COALESCE(u.last_tick, s.last_fire_at),
       last_task_id = COALESCE(
           (SELECT t.id FROM tasks t WHERE t.schedule = s.name AND t.scheduled_for = u.last_tick),
           s.last_task_id)
  FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS u(name, next_fire_at, last_tick)
 WHERE s.name = u.name
"""


async def advance(conn: asyncpg.Connection, moves: Sequence[Advance]) -> None:
    """Store the next fire time and last tick of each locked schedule (one statement).

    Touches no indexed column, so each update is heap-only (migration 0005).
    """
    if moves:
        await conn.execute(
            _ADVANCE,
            [m.name for m in moves],
            [m.next_fire_at for m in moves],
            [m.last_tick for m in moves],
        )


_NEXT_DUE = f"""
SELECT extract(epoch FROM min(next_fire_at) FILTER (WHERE NOT waiting) - clock_timestamp())::float8
           AS next_in,
       coalesce(bool_or(waiting), false) AS waiting
  FROM (SELECT s.next_fire_at,
               s.overlap = 'queue' AND s.next_fire_at <= clock_timestamp()
               AND t.status IS NOT NULL AND t.status <> ALL({_TERMINAL_ARRAY})
               AS waiting
          FROM schedules s LEFT JOIN tasks t ON t.id = s.last_task_id
         WHERE NOT s.paused) AS x
"""  # noqa: S608 - constant status list


@dataclass(frozen=True, slots=True)
class NextDue:
    """When to look again: ``in_s`` seconds until the next tick (<= 0: due; None: none),
    ``waiting``: some ``queue`` tick waits for a run to end (poll for it)."""

    in_s: float | None
    waiting: bool


async def next_due(conn: asyncpg.Connection) -> NextDue:
    """Read when the next unpaused, not-waiting schedule is due (database clock)."""
    row = await conn.fetchrow(_NEXT_DUE)
    return NextDue(row["next_in"], row["waiting"])
