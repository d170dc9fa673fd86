"""The worker's SQL for an attempt it owns: finish it, renew its lease; abandon lost ones.

Every state change is one statement (one round trip) fenced by the task's status and
attempt number, so a stale actor (a worker whose lease expired and whose attempt was
taken over, a duplicate delivery) can never overwrite newer state:

- success: processing(attempt) -> completed; execution -> succeeded;
- failure: processing(attempt) -> retrying (run_at = now + backoff) or failed (+ dead
           letter pending); execution -> failed;
- interrupt (graceful shutdown): processing(attempt) -> queued, execution -> interrupted,
           not counted against ``max_attempts``; the nak'd message claims it again;
- abandon (lease expired: worker gone or frozen): like a failure, execution -> abandoned.

Claiming a task (and adopting an own claim that committed unseen) is in
:mod:`taskflow_common.store.claims`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg


def storable(text: str) -> str:
    """Return ``text`` as Postgres ``text`` accepts it: NUL characters become U+FFFD.

    Error messages come from handlers and may hold any character; Postgres refuses a
    NUL in ``text`` (a DataError), which would leave the attempt unrecorded.
    """
    return text.replace("\x00", "\ufffd")


# --- finishing an attempt -------------------------------------------------------------

_SUCCEED = """
WITH t AS (
    UPDATE tasks
       SET status = 'completed', result = $3::text::jsonb, version = version + 1,
           finished_at = now(), updated_at = now()
     WHERE id = $1 AND attempts = $2 AND status = 'processing'
 RETURNING id
)
UPDATE task_executions
   SET status = 'succeeded', finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started' AND EXISTS (SELECT 1 FROM t)
RETURNING id
"""


async def succeed(
    conn: asyncpg.Connection, task_id: uuid.UUID, attempt: int, result_json: str
) -> bool:
    """Record success with ``result_json`` (JSON text). False when the attempt was fenced.

    Raises ``asyncpg.DataError`` subclasses when Postgres refuses the JSON (e.g. a
    ``\\u0000`` in a string); callers treat that as a permanent failure of the attempt.
    """
    return await conn.fetchval(_SUCCEED, task_id, attempt, result_json) is not None


# The same as _SUCCEED for many attempts in one statement: each row is fenced exactly as
# _SUCCEED fences it (the task's current attempt, still processing; the execution still
# started). Results travel as JSON text and are cast per row. The task rows are locked
# in id order first (``locked``, a one-time filter of the UPDATE), as every bulk lock of
# task rows is, whatever join the planner picks for the UPDATE (issue 11); then their
# started executions, in id order too (``xlocked``: it reads ``locked`` first, so tasks
# before executions, as on every other path), not in the order of the final join.
_SUCCEED_MANY = """
WITH d AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[]) AS d(id, attempt, result)
), locked AS (
    SELECT id FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), xlocked AS (
    SELECT id FROM task_executions
     WHERE task_id = ANY($1::uuid[]) AND status = 'started'
       AND (SELECT count(*) FROM locked) >= 0
     ORDER BY id
       FOR UPDATE
), t AS (
    UPDATE tasks
       SET status = 'completed', result = d.result::jsonb, version = tasks.version + 1,
           finished_at = now(), updated_at = now()
      FROM d
     WHERE tasks.id = d.id AND tasks.attempts = d.attempt AND tasks.status = 'processing'
       AND (SELECT count(*) FROM locked) >= 0
 RETURNING tasks.id, tasks.attempts
)
UPDATE task_executions AS x
   SET status = 'succeeded', finished_at = now(),
       duration_ms = extract(epoch FROM now() - x.started_at) * 1000
  FROM t
 WHERE x.task_id = t.id AND x.attempt = t.attempts AND x.status = 'started'
   AND (SELECT count(*) FROM xlocked) >= 0
RETURNING x.task_id, x.attempt
"""


async def succeed_many(
    conn: asyncpg.Connection, outcomes: Sequence[tuple[uuid.UUID, int, str]]
) -> set[tuple[uuid.UUID, int]]:
    """Record success for each ``(task_id, attempt, result_json)`` in one statement.

    Returns the ``(task_id, attempt)`` pairs recorded; one missing was fenced (a task id
    may appear with two attempts, e.g. a lost attempt still finishing: at most the
    task's current one is recorded).
    All or nothing: when Postgres refuses any result (``asyncpg.DataError`` and the
    like, as :func:`succeed` raises), none is written and the caller must fall back to
    :func:`succeed` per row to learn which one.
    """
    if len(outcomes) == 1:
        ((task_id, attempt, result_json),) = outcomes
        ok = await succeed(conn, task_id, attempt, result_json)
        return {(task_id, attempt)} if ok else set()
    ordered = sorted(outcomes)  # the same lock order in every batch
    rows = await conn.fetch(
        _SUCCEED_MANY, [o[0] for o in ordered], [o[1] for o in ordered], [o[2] for o in ordered]
    )
    return {(r["task_id"], r["attempt"]) for r in rows}


# $1 task, $2 attempt, $3 error, $4 error_type, $5 permanent, $6 backoff seconds,
# $7 execution status ('failed' | 'abandoned'), $8 require an expired lease.
# Lock order: the task row first (cur), then the execution, as every other path does
# (claim, success, interrupt): locking the execution first deadlocked a success racing
# the reaper's abandon (issue 11). Each step is gated by an uncorrelated EXISTS on the
# one before, which Postgres evaluates once before its own scan (a one-time filter).
_FAIL = """
WITH cur AS (
    SELECT id FROM tasks
     WHERE id = $1 AND attempts = $2 AND status = 'processing'
       FOR UPDATE
), e AS (
    UPDATE task_executions
       SET status = $7, error = $3, error_type = $4, finished_at = now(),
           duration_ms = extract(epoch FROM now() - started_at) * 1000
     WHERE task_id = $1 AND attempt = $2 AND status = 'started'
       AND (NOT $8 OR lease_expires_at < now())
       AND EXISTS (SELECT 1 FROM cur)
 RETURNING task_id
), t AS (
    UPDATE tasks
       SET failed_attempts = failed_attempts + 1,
           status = CASE WHEN $5 OR failed_attempts + 1 >= max_attempts
                         THEN 'failed' ELSE 'retrying' END,
           last_error = $3,
           run_at = CASE WHEN $5 OR failed_attempts + 1 >= max_attempts
                         THEN run_at ELSE now() + make_interval(secs => $6) END,
           dispatch_pending = NOT ($5 OR failed_attempts + 1 >= max_attempts),
           dead_letter_pending = ($5 OR failed_attempts + 1 >= max_attempts),
           finished_at = CASE WHEN $5 OR failed_attempts + 1 >= max_attempts
                              THEN now() END,
           version = version + 1, updated_at = now()
     WHERE id = $1 AND attempts = $2 AND status = 'processing'
       AND EXISTS (SELECT 1 FROM e)
 RETURNING status, failed_attempts, run_at
)
SELECT status, failed_attempts, run_at FROM t
"""


@dataclass(frozen=True, slots=True)
class Failure:
    """Outcome of recording a failed attempt: the task's new ``status`` and due time."""

    status: Literal["retrying", "failed"]
    failed_attempts: int
    run_at: Any


async def fail(
    conn: asyncpg.Connection,
    task_id: uuid.UUID,
    attempt: int,
    *,
    error: str,
    error_type: str,
    permanent: bool,
    backoff_s: float,
) -> Failure | None:
    """Record a failed attempt; retry after ``backoff_s`` seconds or fail for good.

    The task fails for good (``failed``, dead letter pending) when ``permanent`` or when
    this was its last counted attempt. Returns None when the attempt was fenced.
    """
    row = await conn.fetchrow(
        _FAIL,
        task_id,
        attempt,
        storable(error),
        storable(error_type),
        permanent,
        backoff_s,
        "failed",
        False,
    )
    return Failure(row["status"], row["failed_attempts"], row["run_at"]) if row else None


async def abandon(
    conn: asyncpg.Connection, task_id: uuid.UUID, attempt: int, *, reason: str, backoff_s: float
) -> Failure | None:
    """End a ``started`` attempt whose lease expired as ``abandoned`` (counted).

    Used by a worker receiving a redelivery of a task whose owner is gone, and by the
    dispatcher's lease reaper. Returns None when the lease is live or already handled.
    """
    row = await conn.fetchrow(
        _FAIL,
        task_id,
        attempt,
        storable(reason),
        "LeaseExpired",
        False,
        backoff_s,
        "abandoned",
        True,
    )
    return Failure(row["status"], row["failed_attempts"], row["run_at"]) if row else None


_INTERRUPT = """
WITH t AS (
    UPDATE tasks
       SET status = 'queued', version = version + 1, updated_at = now()
     WHERE id = $1 AND attempts = $2 AND status = 'processing'
 RETURNING id
)
UPDATE task_executions
   SET status = $4, error = $3, finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started' AND EXISTS (SELECT 1 FROM t)
RETURNING id
"""


async def interrupt(
    conn: asyncpg.Connection, task_id: uuid.UUID, attempt: int, reason: str
) -> bool:
    """Give an attempt back (graceful shutdown): task ``queued``, execution ``interrupted``.

    Not counted against ``max_attempts``. The caller then naks the message, whose
    redelivery claims the task again. False when the attempt was fenced.
    """
    return (
        await conn.fetchval(_INTERRUPT, task_id, attempt, storable(reason), "interrupted")
        is not None
    )


# Fenced by the task too: only an attempt of a task that *is* cancelled, and whose
# current attempt it is, may be closed (a late cancel request must not close the attempt
# of a task that was retried and claimed again since).
_CANCELLED = """
UPDATE task_executions
   SET status = 'cancelled', error = $3, finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started'
   AND EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND attempts = $2 AND status = 'cancelled')
RETURNING id
"""


async def mark_cancelled(
    conn: asyncpg.Connection, task_id: uuid.UUID, attempt: int, reason: str
) -> bool:
    """Close attempt ``attempt`` of a task cancelled through the API.

    False when fenced: the attempt is closed already (the API's cancel closes it
    itself), or the task is not cancelled or has moved on to another attempt.
    """
    return await conn.fetchval(_CANCELLED, task_id, attempt, storable(reason)) is not None


# Never waits for a row lock: a row another transaction holds (a completion batch
# recording it, the reaper abandoning it, a cancel closing it) is skipped this beat and
# reported ``busy``. Waiting could deadlock with a completion batch of this very worker
# locking the same executions in another order (review of issue 11); a row being
# finished needs no renewal, and one that stays started is renewed on the next beat.
# ``started`` is read from the statement's snapshot, so a skipped row still counts as
# alive (its lease is not lost, only not renewed yet).
_RENEW = """
WITH started AS (
    SELECT id FROM task_executions WHERE id = ANY($1::uuid[]) AND status = 'started'
), mine AS (
    SELECT id FROM task_executions
     WHERE id = ANY($1::uuid[]) AND status = 'started'
     ORDER BY id
       FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE task_executions AS x
       SET lease_expires_at = now() + make_interval(secs => $2)
      FROM mine
     WHERE x.id = mine.id AND x.status = 'started'
 RETURNING x.id
)
SELECT started.id, renewed.id IS NOT NULL AS renewed
  FROM started LEFT JOIN renewed ON renewed.id = started.id
"""


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one lease renewal did: ``renewed`` ids, and ``busy`` ones locked elsewhere.

    An id in neither is no longer ``started`` (taken over or cancelled): its lease is
    lost and its handler should stop. A ``busy`` one was alive but not renewed this time
    (another transaction held its row: see ``_RENEW``).
    """

    renewed: frozenset[uuid.UUID]
    busy: frozenset[uuid.UUID]


async def renew_leases(
    conn: asyncpg.Connection, execution_ids: Sequence[uuid.UUID], lease_s: float
) -> Renewal:
    """Extend the leases of running executions by ``lease_s`` seconds from now.

    Never waits for a row lock (see :class:`Renewal`); raises what asyncpg raises
    (``OSError``, ``asyncpg.PostgresError``) when Postgres cannot be reached or refuses.
    """
    if not execution_ids:
        return Renewal(frozenset(), frozenset())
    rows = await conn.fetch(_RENEW, list(execution_ids), lease_s)
    return Renewal(
        renewed=frozenset(r["id"] for r in rows if r["renewed"]),
        busy=frozenset(r["id"] for r in rows if not r["renewed"]),
    )
