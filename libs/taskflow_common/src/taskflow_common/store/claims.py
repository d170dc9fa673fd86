"""The worker's claim: take a task for one attempt, say why a delivery may not, adopt.

Every claim is one statement (one round trip) fenced by the task's status and the
delivery's dispatch number, so a stale actor (a duplicate delivery, an older copy) can
never take a task that is done or owned:

- claim:   queued|retrying -> processing, attempts += 1, opens execution ``attempt``;
           only the message carrying the current dispatch may claim (see ``claim``);
           :func:`claim_many` does the same for a whole fetch in one statement;
- refusal: :func:`diagnose` reads why a delivery did not claim (:class:`Refusal`);
- adopt:   a worker whose claim committed while it saw an error (a timeout) takes its
           own open attempt back when the same delivery comes again (see ``adopt``).

How an attempt ends (success, failure, abandon, interrupt, cancel) and its lease
renewal are in :mod:`taskflow_common.store.attempts`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

# --- claim -----------------------------------------------------------------------------

# A message may claim when it carries the task's current dispatch (the dispatcher
# recorded its publish), or the next one while the dispatcher has not recorded it yet:
# it can crash between the PubAck and its UPDATE, and then this copy is the only one.
# That branch records the publish itself (dispatched_at; the stream sequence it does not
# know, and the one kept belongs to an older dispatch: NULL), so that a later interrupt
# leaves a row the re-dispatch can age (issue 11, items 3 and 9).
# The lease counts from the moment the row is written (clock_timestamp()), not from the
# statement's start (now()): a claim that waited on a lock must not commit with a lease
# that is already spent, or the reaper abandons an attempt its worker is about to run.
_CLAIM = """
WITH t AS (
    UPDATE tasks
       SET status = 'processing', attempts = attempts + 1, version = version + 1,
           dispatch_pending = false, dispatch_seq = $2,
           dispatched_at = CASE WHEN dispatch_pending THEN now() ELSE dispatched_at END,
           stream_seq = CASE WHEN dispatch_pending THEN NULL ELSE stream_seq END,
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
       extract(epoch FROM e.lease_expires_at - now())::float8 AS lease_left_s, e.worker_id
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
    ``owned_elsewhere``: a live worker runs it; ``lease_expired``: the owner did not
    renew in time (gone, or cut off by an outage: the worker takes the attempt over with
    :func:`taskflow_common.store.attempts.abandon` only once ``lease_left_s`` is below
    minus one lease);
    ``stale``: an older or not-yet-due copy.
    ``worker_id`` names the owner of the open attempt (for the last two verdicts);
    ``lease_left_s`` is how long its lease still runs (seconds, database clock; <= 0
    once expired).
    """

    verdict: Verdict
    attempt: int = 0
    failed_attempts: int = 0
    worker_id: str = ""
    lease_left_s: float = 0.0


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
# Lock order: ``locked`` takes the rows' locks in id order (ORDER BY id FOR UPDATE), as
# every bulk lock of task rows does, before the UPDATE touches any: the UPDATE's own join
# is a hash join in physical order for larger batches, and two statements locking
# overlapping rows in different orders deadlock (issue 11). The uncorrelated count is a
# one-time filter Postgres evaluates before the UPDATE's scan.
_CLAIM_MANY = """
WITH locked AS (
    SELECT id FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), t AS (
    UPDATE tasks
       SET status = 'processing', attempts = tasks.attempts + 1, version = tasks.version + 1,
           dispatch_pending = false, dispatch_seq = d.dispatch,
           dispatched_at = CASE WHEN tasks.dispatch_pending THEN now()
                                ELSE tasks.dispatched_at END,
           stream_seq = CASE WHEN tasks.dispatch_pending THEN NULL ELSE tasks.stream_seq END,
           started_at = coalesce(tasks.started_at, now()), updated_at = now()
      FROM unnest($1::uuid[], $2::int[]) AS d(id, dispatch)
     WHERE tasks.id = d.id
       AND tasks.status IN ('queued', 'retrying')
       AND ((NOT tasks.dispatch_pending AND tasks.dispatch_seq = d.dispatch)
            OR (tasks.dispatch_pending AND tasks.dispatch_seq + 1 = d.dispatch
                AND tasks.run_at <= now()))
       AND (SELECT count(*) FROM locked) >= 0
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
        return Refusal(
            verdict,
            why["attempts"],
            why["failed_attempts"],
            why["worker_id"],
            why["lease_left_s"] or 0.0,
        )
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


# The open attempts of ``worker_id`` among ``task_ids`` (each still its task's current
# one): the claims that worker may have committed unseen.
_OPEN_OF_WORKER = """
SELECT e.task_id, e.attempt
  FROM task_executions e
  JOIN tasks t ON t.id = e.task_id AND t.attempts = e.attempt AND t.status = 'processing'
 WHERE e.task_id = ANY($1::uuid[]) AND e.worker_id = $2 AND e.status = 'started'
"""


async def open_attempts(
    conn: asyncpg.Connection, task_ids: Sequence[uuid.UUID], worker_id: str
) -> dict[uuid.UUID, int]:
    """The open attempt (by task id) that ``worker_id`` owns among ``task_ids``."""
    if not task_ids:
        return {}
    rows = await conn.fetch(_OPEN_OF_WORKER, list(task_ids), worker_id)
    return {r["task_id"]: r["attempt"] for r in rows}
