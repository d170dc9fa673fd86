"""Task SQL for the API side once a task exists: read, executions, list (with tag
filters), cancel. Creating tasks is :mod:`taskflow_common.store.submissions`.

Every function takes an open asyncpg connection (pooled or the caller's own, inside a
transaction or not) and returns ``asyncpg.Record`` rows whose columns match
:data:`~taskflow_common.store.rows.TASK_COLUMNS` (render them with
:func:`~taskflow_common.store.rows.task_json`). Statements are constant strings, so
asyncpg's per-connection statement cache makes each one a single round trip after its
first use.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from taskflow_common.errors import InvalidStateError, NotFoundError, TaskFlowError
from taskflow_common.store import cursor as cursor_codec
from taskflow_common.store.rows import TASK_COLUMNS, TERMINAL_STATUSES

MAX_LIST_LIMIT = 200
CANCELLABLE_STATUSES = ("queued", "retrying", "processing")
"""Task statuses :func:`cancel` accepts; a terminal task is a 409 ``invalid_state``."""


_GET = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"  # noqa: S608 - constant columns


async def get(conn: asyncpg.Connection, task_id: uuid.UUID) -> asyncpg.Record:
    """Return the task row ``task_id``; raise :class:`NotFoundError` when there is none."""
    row = await conn.fetchrow(_GET, task_id)
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    return row


# One round trip tells "no such task" (no row) from "no attempts yet" (one row of NULLs).
_EXECUTIONS = """
SELECT e.id, e.task_id, e.attempt, e.status, e.worker_id, e.error, e.error_type,
       e.started_at, e.finished_at, e.duration_ms
FROM tasks t LEFT JOIN task_executions e ON e.task_id = t.id
WHERE t.id = $1
ORDER BY e.attempt
"""


async def executions(conn: asyncpg.Connection, task_id: uuid.UUID) -> list[asyncpg.Record]:
    """Return the task's execution rows ordered by attempt (``[]`` before the first run).

    Columns: id, task_id, attempt, status, worker_id, error, error_type, started_at,
    finished_at, duration_ms (render with ``rows.execution_json``). Raises
    :class:`NotFoundError` when the task does not exist.
    """
    rows = await conn.fetch(_EXECUTIONS, task_id)
    if not rows:
        raise NotFoundError(f"task {task_id} not found")
    return [r for r in rows if r["id"] is not None]


# -- cancel ----------------------------------------------------------------------------

CANCEL_REASON = "cancelled by request"

_CANCEL = f"""
UPDATE tasks
   SET status = 'cancelled', dispatch_pending = false, finished_at = now(),
       version = version + 1, updated_at = now()
 WHERE id = $1 AND status = ANY($2::text[])
RETURNING {TASK_COLUMNS}
"""  # noqa: S608 - constant columns

_CLOSE_RUNNING = """
UPDATE task_executions
   SET status = 'cancelled', error = $3, finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started'
RETURNING attempt
"""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Result of :func:`cancel`: the task row, and the attempt that was running, if any.

    ``stopped_attempt`` is the attempt whose execution this cancel closed as
    ``cancelled``: its worker must be told to stop the handler (a ``CancelRequest``).
    """

    task: asyncpg.Record
    stopped_attempt: int | None


async def cancel(conn: asyncpg.Connection, task_id: uuid.UUID) -> Cancelled:
    """Cancel a queued, retrying or processing task; return the :class:`Cancelled`.

    1. The task becomes ``cancelled`` (``dispatch_pending`` cleared, so the dispatcher
       never publishes it; a copy already on the bus is refused by the claim, which
       requires queued/retrying), fenced on its status. Against a worker recording the
       running attempt, the row lock decides: if the worker's success or failure commits
       first the task is terminal and this raises 409; if the cancel commits first the
       worker's statement (fenced on ``status='processing'`` and the attempt) matches
       nothing.
    2. Then, in its own statement, the running attempt (if any) is closed as
       ``cancelled``. Separate on purpose: the worker's failure path locks the
       execution row before the task row, so holding both here could deadlock. A
       worker failure recorded between the two leaves that attempt ``failed``, which is
       what happened to it.

    Call it outside a transaction (each statement commits on its own). Raises
    :class:`NotFoundError` for an unknown task and :class:`InvalidStateError` (409
    ``invalid_state``) for a task that is already completed, failed or cancelled.
    """
    # Repeats only if a retry made the task cancellable again between the two reads.
    for _ in range(3):
        row = await conn.fetchrow(_CANCEL, task_id, list(CANCELLABLE_STATUSES))
        if row is not None:
            break
        status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
        if status is None:
            raise NotFoundError(f"task {task_id} not found")
        if status in TERMINAL_STATUSES:
            raise InvalidStateError(
                f"task {task_id} is {status}; only queued, retrying or processing tasks "
                "can be cancelled"
            )
    else:
        raise TaskFlowError(f"task {task_id}: status kept changing during cancel")
    stopped = None
    if row["attempts"] > 0:
        stopped = await conn.fetchval(_CLOSE_RUNNING, task_id, row["attempts"], CANCEL_REASON)
    return Cancelled(row, stopped)


# -- listing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: ``rows`` newest first; ``next_cursor`` None on the last."""

    rows: Sequence[asyncpg.Record]
    next_cursor: str | None


async def list_tasks(
    conn: asyncpg.Connection,
    *,
    status: str | None = None,
    type: str | None = None,
    priority: str | None = None,
    schedule: str | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Return tasks newest first (``created_at DESC, id DESC``), filtered by equality.

    ``schedule`` keeps the tasks a schedule made (its ticks and run-now tasks; served
    by ``tasks_schedule_created``). ``tags`` keeps tasks holding every given key with
    the given value (``tags @> $n``, served by the ``tasks_tags`` GIN index); other tags
    of a task do not matter.

    Keyset pagination: ``cursor`` (from a previous :class:`Page`) continues strictly
    after the last row returned, so rows inserted meanwhile never shift a page (new rows
    are newer than every cursor and appear only on a fresh first page). ``limit`` is
    1..200. Raises :class:`~taskflow_common.errors.InvalidCursor` for a damaged cursor
    and ``ValueError`` for a limit out of range. The statement is assembled from fixed
    fragments (values are always parameters), so each filter combination is its own
    cached statement and can use its ``tasks_<filter>_created`` index.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIST_LIMIT}")
    where: list[str] = []
    args: list[Any] = []
    filters = (("status", status), ("type", type), ("priority", priority), ("schedule", schedule))
    for column, value in filters:
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if tags:
        args.append(dict(tags))
        where.append(f"tags @> ${len(args)}::jsonb")
    if cursor is not None:
        after_at, after_id = cursor_codec.decode(cursor)
        args += [after_at, after_id]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (
        f"SELECT {TASK_COLUMNS} FROM tasks"  # noqa: S608 - fixed fragments, values are parameters
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    )
    rows = await conn.fetch(sql, *args)
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], cursor_codec.encode(last["created_at"], last["id"]))
