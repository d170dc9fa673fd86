"""The worker's SQL: claim a task, finish an attempt, renew leases, abandon lost attempts.

Every state change is one statement (one round trip) fenced by the task's status and
attempt number, so a stale actor (a worker whose lease expired and whose attempt was
taken over, a duplicate delivery) can never overwrite newer state:

- claim:   queued|retrying -> processing, attempts += 1, opens execution ``attempt``;
           only the message carrying the current dispatch may claim (see ``claim``);
- success: processing(attempt) -> completed; execution -> succeeded;
- failure: processing(attempt) -> retrying (run_at = now + backoff) or failed (+ dead
           letter pending); execution -> failed;
- interrupt (graceful shutdown): processing(attempt) -> queued, execution -> interrupted,
           not counted against ``max_attempts``; the nak'd message claims it again;
- adopt:   a worker whose claim committed while it saw an error (a timeout) takes its
           own open attempt back when the same delivery comes again (see ``adopt``);
- abandon (lease expired: worker gone or frozen): like a failure, execution -> abandoned.
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


# --- claim -----------------------------------------------------------------------------

# A message may claim when it carries the task's current dispatch (the dispatcher
# recorded its publish), or the next one while the dispatcher has not recorded it yet:
# it can crash between the PubAck and its UPDATE, and then this copy is the only one.
# The lease counts from the moment the row is written (clock_timestamp()), not from the
# statement's start (now()): a claim that waited on a lock must not commit with a lease
# that is already spent, or the reaper abandons an attempt its worker is about to run.
_CLAIM = """
WITH t AS (
    UPDATE tasks
       SET status = 'processing', attempts = attempts + 1, version = version + 1,
           dispatch_pending = false, dispatch_seq = $2,
           started_at = coalesce(started_at, now()), updated_at = now()
     WHERE id = $1
       AND status IN ('queued', 'retrying')
       AND ((NOT dispatch_pending AND dispatch_seq = $2)
            OR (dispatch_pending AND dispatch_seq + 1 = $2 AND run_at <= now()))
 RETURNING id, attempts, type, payload, priority, timeout_s, max_attempts,
           failed_attempts, trace_parent,
           extract(epoch FROM now() - run_at)::float8 AS queue_wait_s
), e AS (
    INSERT INTO task_executions (task_id, attempt, status, worker_id, lease_expires_at)
    SELECT id, attempts, 'started', $3, clock_timestamp() + make_interval(secs => $4) FROM t
 RETURNING id
)
SELECT t.*, e.id AS execution_id FROM t, e
"""

# Why a claim did not match: read once, only on the rare path.
_DIAGNOSE = """
SELECT t.status, t.attempts, t.dispatch_seq, t.dispatch_pending, t.failed_attempts,
       e.status AS execution_status, (e.lease_expires_at < now()) AS lease_expired,
       e.worker_id
  FROM tasks t
  LEFT JOIN task_executions e ON e.task_id = t.id AND e.attempt = t.attempts
 WHERE t.id = $1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A task this worker now owns for attempt ``attempt`` (execution ``execution_id``)."""

    task_id: uuid.UUID
    attempt: int
    execution_id: uuid.UUID
    type: str
    payload: Any
    priority: str
    timeout_s: float | None
    max_attempts: int
    failed_attempts: int
    trace_parent: str | None
    queue_wait_s: float | None = None
    """Seconds from the task being due (``run_at``) to this claim (database clock); None
    for an adopted claim."""


Verdict = Literal["unknown_task", "already_done", "owned_elsewhere", "lease_expired", "stale"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a delivery did not claim its task.

    ``unknown_task``: no such row (dead-letter the message); ``already_done``: terminal;
    ``owned_elsewhere``: a live worker runs it; ``lease_expired``: the owner is gone,
    take the attempt over with :func:`abandon`; ``stale``: an older or not-yet-due copy.
    ``worker_id`` names the owner of the open attempt (for the last two verdicts).
    """

    verdict: Verdict
    attempt: int = 0
    failed_attempts: int = 0
    worker_id: str = ""


def _claim_of(row: asyncpg.Record) -> Claim:
    return Claim(
        task_id=row["id"],
        attempt=row["attempts"],
        execution_id=row["execution_id"],
        type=row["type"],
        payload=row["payload"],
        priority=row["priority"],
        timeout_s=row["timeout_s"],
        max_attempts=row["max_attempts"],
        failed_attempts=row["failed_attempts"],
        trace_parent=row["trace_parent"],
        queue_wait_s=row.get("queue_wait_s"),  # absent for an adopted claim
    )


async def claim(
    conn: asyncpg.Connection, task_id: uuid.UUID, dispatch: int, worker_id: str, lease_s: float
) -> Claim | Refusal:
    """Claim ``task_id`` for the delivery of dispatch ``dispatch`` and open its execution.

    One round trip when it succeeds, two when it does not. ``lease_s`` (seconds) is the
    first lease on the execution row. Raises asyncpg errors on outage (callers nak).
    """
    row = await conn.fetchrow(_CLAIM, task_id, dispatch, worker_id, lease_s)
    if row is not None:
        return _claim_of(row)
    return await diagnose(conn, task_id)


# The same claim for many deliveries in one statement (one round trip, one commit): the
# per-row conditions are exactly _CLAIM's, with $1/$2 taken row by row from the arrays.
# The caller passes distinct task ids sorted ascending, so that two workers claiming
# overlapping sets (duplicate deliveries) lock the rows in the same order.
_CLAIM_MANY = """
WITH t AS (
    UPDATE tasks
       SET status = 'processing', attempts = tasks.attempts + 1, version = tasks.version + 1,
           dispatch_pending = false, dispatch_seq = d.dispatch,
           started_at = coalesce(tasks.started_at, now()), updated_at = now()
      FROM unnest($1::uuid[], $2::int[]) AS d(id, dispatch)
     WHERE tasks.id = d.id
       AND tasks.status IN ('queued', 'retrying')
       AND ((NOT tasks.dispatch_pending AND tasks.dispatch_seq = d.dispatch)
            OR (tasks.dispatch_pending AND tasks.dispatch_seq + 1 = d.dispatch
                AND tasks.run_at <= now()))
 RETURNING tasks.id, tasks.attempts, tasks.type, tasks.payload, tasks.priority,
           tasks.timeout_s, tasks.max_attempts, tasks.failed_attempts, tasks.trace_parent,
           extract(epoch FROM now() - tasks.run_at)::float8 AS queue_wait_s
), e AS (
    INSERT INTO task_executions (task_id, attempt, status, worker_id, lease_expires_at)
    SELECT id, attempts, 'started', $3, clock_timestamp() + make_interval(secs => $4) FROM t
 RETURNING id, task_id
)
SELECT t.*, e.id AS execution_id FROM t JOIN e ON e.task_id = t.id
"""


async def claim_many(
    conn: asyncpg.Connection,
    deliveries: Sequence[tuple[uuid.UUID, int]],
    worker_id: str,
    lease_s: float,
) -> dict[uuid.UUID, Claim]:
    """Claim every ``(task_id, dispatch)`` that may claim, in one round trip.

    Task ids must be distinct. Returns the claims by task id; a delivery missing from
    the result did not claim (ask :func:`diagnose` why). A single delivery uses
    :data:`_CLAIM`, the statement :func:`claim` runs. Raises asyncpg errors on outage:
    then nothing is known about any of them (the statement may have committed).
    """
    if len(deliveries) == 1:
        ((task_id, dispatch),) = deliveries
        row = await conn.fetchrow(_CLAIM, task_id, dispatch, worker_id, lease_s)
        return {} if row is None else {row["id"]: _claim_of(row)}
    ordered = sorted(deliveries)
    rows = await conn.fetch(
        _CLAIM_MANY, [d[0] for d in ordered], [d[1] for d in ordered], worker_id, lease_s
    )
    return {r["id"]: _claim_of(r) for r in rows}


async def diagnose(conn: asyncpg.Connection, task_id: uuid.UUID) -> Refusal:
    """Say why a delivery of ``task_id`` did not claim it (one round trip)."""
    why = await conn.fetchrow(_DIAGNOSE, task_id)
    if why is None:
        return Refusal("unknown_task")
    if why["status"] in ("completed", "failed", "cancelled"):
        return Refusal("already_done")
    if why["status"] == "processing" and why["execution_status"] == "started":
        verdict: Verdict = "lease_expired" if why["lease_expired"] else "owned_elsewhere"
        return Refusal(verdict, why["attempts"], why["failed_attempts"], why["worker_id"])
    return Refusal("stale")


# The attempt must still be open, owned by this worker, and the task's current one for
# this very dispatch; renewing the lease is the only write.
_ADOPT = """
WITH e AS (
    UPDATE task_executions
       SET lease_expires_at = now() + make_interval(secs => $5)
     WHERE task_id = $1 AND attempt = $2 AND status = 'started' AND worker_id = $4
       AND EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND attempts = $2
                      AND status = 'processing' AND dispatch_seq = $3)
 RETURNING id
)
SELECT t.id, t.attempts, t.type, t.payload, t.priority, t.timeout_s, t.max_attempts,
       t.failed_attempts, t.trace_parent, e.id AS execution_id
  FROM tasks t, e
 WHERE t.id = $1
"""


async def adopt(
    conn: asyncpg.Connection,
    task_id: uuid.UUID,
    attempt: int,
    dispatch: int,
    worker_id: str,
    lease_s: float,
) -> Claim | None:
    """Take back attempt ``attempt`` that ``worker_id`` claimed without seeing the result.

    A claim can commit in Postgres while its worker gets an error (a statement timeout
    whose cancel did not get through); the worker then naks the delivery, and its
    redelivery finds the attempt "owned" by that same worker with nobody running it.
    Only the worker that knows its claim outcome was uncertain may call this, with the
    same delivery's ``dispatch``. Renews the lease; returns the :class:`Claim` to run,
    or None when the attempt is no longer open (e.g. the reaper abandoned it).
    """
    row = await conn.fetchrow(_ADOPT, task_id, attempt, dispatch, worker_id, lease_s)
    return None if row is None else _claim_of(row)


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
# started). Results travel as JSON text and are cast per row.
_SUCCEED_MANY = """
WITH d AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[]) AS d(id, attempt, result)
), t AS (
    UPDATE tasks
       SET status = 'completed', result = d.result::jsonb, version = tasks.version + 1,
           finished_at = now(), updated_at = now()
      FROM d
     WHERE tasks.id = d.id AND tasks.attempts = d.attempt AND tasks.status = 'processing'
 RETURNING tasks.id, tasks.attempts
)
UPDATE task_executions AS x
   SET status = 'succeeded', finished_at = now(),
       duration_ms = extract(epoch FROM now() - x.started_at) * 1000
  FROM t
 WHERE x.task_id = t.id AND x.attempt = t.attempts AND x.status = 'started'
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
_FAIL = """
WITH e AS (
    UPDATE task_executions
       SET status = $7, error = $3, error_type = $4, finished_at = now(),
           duration_ms = extract(epoch FROM now() - started_at) * 1000
     WHERE task_id = $1 AND attempt = $2 AND status = 'started'
       AND (NOT $8 OR lease_expires_at < now())
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


_CANCELLED = """
UPDATE task_executions
   SET status = 'cancelled', error = $3, finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started'
RETURNING id
"""


async def mark_cancelled(
    conn: asyncpg.Connection, task_id: uuid.UUID, attempt: int, reason: str
) -> bool:
    """Close a running attempt whose task was cancelled through the API."""
    return await conn.fetchval(_CANCELLED, task_id, attempt, storable(reason)) is not None


_RENEW = """
UPDATE task_executions
   SET lease_expires_at = now() + make_interval(secs => $2)
 WHERE id = ANY($1::uuid[]) AND status = 'started'
RETURNING id
"""


async def renew_leases(
    conn: asyncpg.Connection, execution_ids: Sequence[uuid.UUID], lease_s: float
) -> set[uuid.UUID]:
    """Extend the leases of running executions by ``lease_s`` seconds from now.

    Returns the ids still ``started``; an id missing from the result lost its lease
    (taken over or cancelled) and its handler should stop.
    """
    if not execution_ids:
        return set()
    rows = await conn.fetch(_RENEW, list(execution_ids), lease_s)
    return {r["id"] for r in rows}
