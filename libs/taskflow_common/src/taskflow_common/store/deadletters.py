"""The dead-letter record: what the dlq-monitor writes and the operators act on.

One row per dead-letter message (``dead_letters``, migration 0001), keyed by the
message's ``Nats-Msg-Id`` (``dedupe_key``) so that a redelivery, or a re-publish after
the stream's dedupe window, is recorded once. A row is ``open`` until an operator
replays its task (``replayed``) or discards it (``discarded``); ``resolved_at`` says when.

Every function takes an asyncpg connection (or anything with the same ``fetch*``
methods, such as a pool) and runs a single statement, so it is atomic on its own and
may also be called inside the caller's transaction. Counts over windows are
:mod:`taskflow_common.store.deadletter_stats`; replays by filter are
:mod:`taskflow_common.store.deadletter_bulk`; the rows' JSON is
:func:`taskflow_common.store.rows.dead_letter_json`. Driver errors are left to the
caller's :class:`~taskflow_common.db.Database`, which turns outages into
:class:`~taskflow_common.errors.UnavailableError`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from taskflow_common.errors import InvalidStateError, NotFoundError
from taskflow_common.messages import DeadLetter
from taskflow_common.store import cursor as cursor_codec
from taskflow_common.store.rows import TASK_COLUMNS, DeadLetterStatus

REPLAYABLE_STATUSES = ("failed", "cancelled")
"""Task statuses a replay starts from; any other status is a 409 ``invalid_state``."""

MAX_LIMIT = 200

_COLUMNS = (
    "id, dedupe_key, task_id, type, priority, attempts, error, reason, subject, raw, "
    "trace_id, status, failed_at, recorded_at, resolved_at"
)
_EXECUTION_COLUMNS = (
    "id, task_id, attempt, status, worker_id, error, started_at, finished_at, duration_ms"
)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of dead letters, newest first; ``next_cursor`` is None on the last page."""

    items: list[asyncpg.Record]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Detail:
    """Everything known about one task's dead letters.

    ``dead_letters`` is newest first and never empty; ``task`` is the task row
    (:data:`~taskflow_common.store.rows.TASK_COLUMNS`) or None when the dead letter names
    no stored task; ``executions`` are the task's attempts in order (empty without a task).
    """

    dead_letters: list[asyncpg.Record]
    task: asyncpg.Record | None
    executions: list[asyncpg.Record]


# -- recording ------------------------------------------------------------------------


def _text(value: str | None) -> str | None:
    # Postgres text cannot hold NUL; a dead letter must never be refused for one.
    return None if value is None else value.replace("\x00", "\ufffd")


def _timestamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


async def record(conn: asyncpg.Connection, dedupe_key: str, dl: DeadLetter) -> bool:
    """Store ``dl`` under ``dedupe_key`` once; return True when it was new.

    ``dedupe_key`` is the message's ``Nats-Msg-Id`` (``dlq:<task_id>:<attempt>``) or
    another key unique to the message. A second call with the same key changes nothing
    and returns False (``ON CONFLICT (dedupe_key) DO NOTHING``).

    Missing ``type``/``priority`` are taken from the task row when the task exists.
    When ``dl.task_id`` names no stored task, the row keeps ``task_id`` NULL (the column
    references ``tasks``) and its ``reason`` says which id was given. ``failed_at`` is
    ``dl.failed_at`` when it parses as RFC 3339, else the database's ``now()``. NUL
    characters in text fields are replaced by U+FFFD.

    In the same statement, the task's ``dead_letter_pending`` is cleared when this is the
    dead letter of its current failure (the task is ``failed`` and its ``attempts`` are
    ``dl.attempts``; migration 0007): until then the dispatcher keeps the dead letter in
    its outbox and publishes it again if the bus loses it. A duplicate clears it too.

    A dead letter of a failure the task has moved on from (it is not ``failed`` any
    more, or failed again on a later attempt: it was retried or replayed while the dead
    letter was on the bus) is recorded already ``replayed`` (``resolved_at=now()``),
    never ``open``: the task row is locked first, so a concurrent :func:`replay` either
    committed before or resolves this row after.
    """
    row = await conn.fetchrow(
        """
        WITH w AS (SELECT $2::uuid AS want),
        t AS (
            -- Locked, and read as committed after the lock: a replay either committed
            -- before (then the task is not failed here) or waits for this statement
            -- (and then resolves the row inserted here).
            SELECT id, type, priority, status, attempts,
                   status <> 'failed' OR attempts IS DISTINCT FROM coalesce($5, attempts)
                       AS moved_on
              FROM tasks WHERE id = (SELECT want FROM w)
               FOR UPDATE
        ),
        cleared AS (
            UPDATE tasks
               SET dead_letter_pending = false, dead_letter_seq = NULL,
                   dead_letter_stream = NULL
             WHERE id = (SELECT id FROM t WHERE NOT moved_on) AND dead_letter_pending
               AND attempts = $5
            RETURNING id
        )
        INSERT INTO dead_letters
            (dedupe_key, task_id, type, priority, attempts, error, reason, subject, raw,
             trace_id, failed_at, status, resolved_at)
        SELECT $1, t.id, coalesce($3, t.type), coalesce($4, t.priority), $5, $6,
               CASE WHEN w.want IS NOT NULL AND t.id IS NULL
                    THEN $7 || ' (task ' || w.want::text || ' is not in the tasks table)'
                    ELSE $7 END,
               $8, $9, $10, coalesce($11, now()),
               CASE WHEN t.moved_on THEN 'replayed' ELSE 'open' END,
               CASE WHEN t.moved_on THEN now() END
        FROM w
        LEFT JOIN t ON t.id = w.want
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        """,
        _text(dedupe_key),
        dl.task_id,
        _text(dl.type),
        _text(dl.priority),
        dl.attempts,
        _text(dl.error),
        _text(dl.reason) or "unknown",
        _text(dl.subject),
        dl.raw,
        _text(dl.trace_id),
        _timestamp(dl.failed_at),
    )
    return row is not None


# -- reading --------------------------------------------------------------------------


def like_pattern(text: str) -> str:
    """``text`` as an ILIKE pattern matching it as a substring (``%``, ``_`` literal)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_dead_letters(
    conn: asyncpg.Connection,
    *,
    type: str | None = None,
    error_contains: str | None = None,
    status: DeadLetterStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Return dead letters newest first (``failed_at DESC, id DESC``), keyset-paginated.

    Filters: ``type`` exact; ``error_contains`` a case-insensitive substring of the error
    or the reason (``%`` and ``_`` match literally); ``status`` one of
    :data:`~taskflow_common.store.rows.DEAD_LETTER_STATUSES`. ``limit`` is clamped to
    1..200. ``cursor`` is a previous page's ``next_cursor``; pages stay stable while new
    dead letters arrive. Raises :class:`~taskflow_common.errors.InvalidCursor` for a
    cursor this module did not produce.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    where: list[str] = []
    args: list[Any] = []
    if type is not None:
        args.append(type)
        where.append(f"type = ${len(args)}")
    if error_contains:
        args.append(like_pattern(error_contains))
        where.append(f"(error ILIKE ${len(args)} OR reason ILIKE ${len(args)})")
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if cursor is not None:
        at, ident = cursor_codec.decode(cursor)
        args.extend([at, ident])
        where.append(f"(failed_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    clauses = " WHERE " + " AND ".join(where) if where else ""
    sql = f"SELECT {_COLUMNS} FROM dead_letters{clauses} ORDER BY failed_at DESC, id DESC"  # noqa: S608 - constant column lists; values are bind parameters
    sql += f" LIMIT ${len(args)}"
    rows = list(await conn.fetch(sql, *args))
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], cursor_codec.encode(last["failed_at"], last["id"]))


async def get(conn: asyncpg.Connection, task_id: uuid.UUID) -> Detail:
    """Return the dead letters of task ``task_id`` with the task and its executions.

    ``task_id`` may also be a dead letter's own ``id`` (the only handle on a dead letter
    that names no task). Raises :class:`NotFoundError` when no dead letter matches.
    """
    sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE task_id = $1 OR id = $1"  # noqa: S608 - constant column lists; values are bind parameters
    letters = list(await conn.fetch(sql + " ORDER BY failed_at DESC, id DESC", task_id))
    if not letters:
        raise NotFoundError(f"no dead letter for {task_id}")
    real_task = next((r["task_id"] for r in letters if r["task_id"] is not None), None)
    if real_task is None:
        return Detail(letters, None, [])
    task_sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"  # noqa: S608 - constant column lists; values are bind parameters
    task = await conn.fetchrow(task_sql, real_task)
    executions = await conn.fetch(
        f"SELECT {_EXECUTION_COLUMNS} FROM task_executions "  # noqa: S608 - constant column lists; values are bind parameters
        "WHERE task_id = $1 ORDER BY attempt",
        real_task,
    )
    return Detail(letters, task, list(executions))


# -- acting ---------------------------------------------------------------------------


async def replay(conn: asyncpg.Connection, task_id: uuid.UUID) -> asyncpg.Record:
    """Send a failed or cancelled task back to ``queued`` with a fresh attempt budget.

    In one statement: the task gets ``status='queued'``, ``failed_attempts=0``,
    ``dispatch_pending=true`` (the dispatcher publishes it), ``run_at=now()``,
    ``result=NULL``, ``finished_at=NULL``, ``version+1``, ``updated_at=now()``, and
    ``dead_letter_pending=false`` (a dead letter not yet published reports the failure
    being retried now); ``attempts`` is kept, so new execution rows continue the
    numbering and the history stays. The task's open dead letters become ``replayed``
    with ``resolved_at=now()``.

    Returns the task row (:data:`~taskflow_common.store.rows.TASK_COLUMNS`) plus
    ``dead_letters_replayed`` (int). Raises :class:`NotFoundError` for an unknown task
    and :class:`InvalidStateError` (409 ``invalid_state``) when its status is not
    ``failed`` or ``cancelled``; concurrent replays of one task succeed once.
    """
    async with conn.transaction():
        # Lock first, so that the statement below (and its snapshot) starts after a
        # dlq-monitor recording a dead letter of this task has committed.
        await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        row = await conn.fetchrow(
            f"""
            WITH t AS (
                UPDATE tasks
                SET status = 'queued', failed_attempts = 0, dispatch_pending = true,
                    dead_letter_pending = false, dead_letter_seq = NULL,
                    dead_letter_stream = NULL, run_at = now(), result = NULL,
                    finished_at = NULL, version = version + 1, updated_at = now()
                WHERE id = $1 AND status = ANY($2::text[])
                RETURNING {TASK_COLUMNS}
            ), d AS (
                UPDATE dead_letters SET status = 'replayed', resolved_at = now()
                WHERE task_id = $1 AND status = 'open' AND EXISTS (SELECT 1 FROM t)
                RETURNING id
            )
            SELECT t.*, (SELECT count(*) FROM d)::int AS dead_letters_replayed FROM t
            """,  # noqa: S608 - constant column lists; values are bind parameters
            task_id,
            list(REPLAYABLE_STATUSES),
        )
    if row is not None:
        return row
    current = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
    if current is None:
        raise NotFoundError(f"task {task_id} not found")
    raise InvalidStateError(
        f"task {task_id} is {current}; only failed or cancelled tasks can be replayed"
    )


async def resolve_late(conn: asyncpg.Connection, task_ids: list[uuid.UUID]) -> int:
    """Resolve open dead letters of just-replayed tasks that the replay's statement could
    not see: recorded by a dlq-monitor that held a task row's lock while the replay waited
    for it (committed after the statement's snapshot). Call in the replay's transaction,
    which holds the task rows now, so no later record can be ``open``. Returns how many."""
    if not task_ids:
        return 0
    status = await conn.execute(
        "UPDATE dead_letters SET status = 'replayed', resolved_at = now()"
        " WHERE task_id = ANY($1::uuid[]) AND status = 'open'",
        task_ids,
    )
    return int(status.split()[-1])


async def discard(conn: asyncpg.Connection, dead_letter_id: uuid.UUID) -> list[asyncpg.Record]:
    """Mark open dead letters ``discarded`` (``resolved_at=now()``); the task is untouched.

    ``dead_letter_id`` is a dead letter's ``id`` or a task id (then every open dead
    letter of that task). Returns the discarded rows, newest first. Raises
    :class:`NotFoundError` when nothing matches and :class:`InvalidStateError` when the
    matches are all already resolved.
    """
    changed = await conn.fetch(
        f"""
        UPDATE dead_letters SET status = 'discarded', resolved_at = now()
        WHERE (id = $1 OR task_id = $1) AND status = 'open'
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column lists; values are bind parameters
        dead_letter_id,
    )
    if changed:
        return sorted(changed, key=lambda r: (r["failed_at"], r["id"]), reverse=True)
    states = await conn.fetch(
        "SELECT DISTINCT status FROM dead_letters WHERE id = $1 OR task_id = $1 ORDER BY 1",
        dead_letter_id,
    )
    if not states:
        raise NotFoundError(f"no dead letter for {dead_letter_id}")
    raise InvalidStateError(
        f"dead letters for {dead_letter_id} are already "
        + " and ".join(r["status"] for r in states)
    )


async def open_by_type(conn: asyncpg.Connection) -> dict[str | None, int]:
    """Open dead letters per type (``None`` for those with no type): the metrics gauge."""
    rows = await conn.fetch(
        "SELECT type, count(*) AS n FROM dead_letters WHERE status = 'open' GROUP BY type"
    )
    return {r["type"]: int(r["n"]) for r in rows}
