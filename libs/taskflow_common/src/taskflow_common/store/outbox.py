"""The dispatcher's SQL: the transactional outbox, dead letters to publish, lease reaping.

A task is *due* when ``dispatch_pending AND run_at <= now()``. The dispatcher locks a
batch of due rows (``FOR UPDATE SKIP LOCKED``, so two dispatchers never take the same
row), publishes them, and records each PubAck'd publish by bumping ``dispatch_seq`` and
clearing ``dispatch_pending`` in the same transaction. If it dies in between, the locks
are released, the rows stay due, and the next publish reuses the same ``Nats-Msg-Id``
(task id + dispatch number), which the server deduplicates.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

CHANNEL = "taskflow_outbox"
"""LISTEN channel; a trigger notifies it when a due task or a dead letter is committed."""
DEAD_LETTER_PAYLOAD = "dead"
"""Payload of a :data:`CHANNEL` notification whose statement left a dead letter pending
(migration 0003); other notifications carry an empty payload."""

_MARK_DISPATCHED = """
UPDATE tasks AS t
   SET dispatch_pending = false, dispatch_seq = u.seq, dispatched_at = now(),
       stream_seq = u.stream_seq
  FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS u(id, seq, stream_seq)
 WHERE t.id = u.id AND t.dispatch_pending AND t.dispatch_seq + 1 = u.seq
"""


# One round trip per pass: lock a batch of due rows and, in the same statement, say when
# the next pending task not in that batch is due (a row locked by someone else, or the
# next delayed one). The last row is that sentinel (id NULL); the due rows come first,
# oldest run_at first. The scalar subquery reads the partial index tasks_dispatch_due in
# run_at order and stops at its first row outside the batch.
_LOCK_DUE_AND_NEXT = """
WITH due AS (
    SELECT id, attempts, dispatch_seq, priority, trace_parent, run_at
      FROM tasks
     WHERE dispatch_pending AND run_at <= now()
     ORDER BY run_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
SELECT * FROM (
    SELECT 0 AS part, id, attempts, dispatch_seq, priority, trace_parent, run_at,
           NULL::float8 AS next_due_in
      FROM due
    UNION ALL
    SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL,
           (SELECT extract(epoch FROM min(t.run_at) - now())::float8
              FROM tasks t
             WHERE t.dispatch_pending AND t.id NOT IN (SELECT id FROM due))
) AS pass
ORDER BY part, run_at
"""


@dataclass(frozen=True, slots=True)
class Due:
    """A task to publish: message fields plus the stored trace context."""

    task_id: uuid.UUID
    attempt: int
    dispatch: int
    priority: str
    trace_parent: str | None


@dataclass(frozen=True, slots=True)
class DuePass:
    """What one outbox pass locked, and when to look again.

    ``due``: the locked tasks, oldest ``run_at`` first. ``next_due_in``: seconds until
    the earliest pending task outside ``due`` is due (<= 0: one is due already, e.g.
    locked by another dispatcher, or left over by the limit), None when there is none.
    """

    due: list[Due]
    next_due_in: float | None


async def lock_due_pass(conn: asyncpg.Connection, limit: int) -> DuePass:
    """Lock up to ``limit`` due tasks and read the next due time, in ONE round trip.

    Call inside a transaction (the row locks last until it ends). Each :class:`Due`
    carries the dispatch number its message must carry (current + 1) and the attempt it
    is meant to start (attempts + 1).
    """
    rows = await conn.fetch(_LOCK_DUE_AND_NEXT, limit)
    due = [
        Due(r["id"], r["attempts"] + 1, r["dispatch_seq"] + 1, r["priority"], r["trace_parent"])
        for r in rows
        if r["part"] == 0
    ]
    later = rows[-1]["next_due_in"] if rows and rows[-1]["part"] == 1 else None
    return DuePass(due, None if later is None else float(later))


async def mark_dispatched(
    conn: asyncpg.Connection, published: Sequence[Due], stream_seqs: Sequence[int]
) -> None:
    """Record PubAck'd publishes (same transaction as :func:`lock_due_pass`).

    ``stream_seqs[i]`` is the PubAck's stream sequence of ``published[i]``: kept on the
    row so that the dispatcher can ask the stream whether the message is still there
    (:mod:`taskflow_common.store.waiting`).
    """
    if published:
        await conn.execute(
            _MARK_DISPATCHED,
            [d.task_id for d in published],
            [d.dispatch for d in published],
            list(stream_seqs),
        )


async def dispatch_lag(conn: asyncpg.Connection) -> float:
    """Seconds the oldest due-but-unpublished task has been due (0.0 when none is).

    One lookup on the partial index ``tasks_dispatch_due``; database clock.
    """
    lag = await conn.fetchval(
        "SELECT extract(epoch FROM now() - min(run_at))::float8 FROM tasks"
        " WHERE dispatch_pending AND run_at <= now()"
    )
    return max(0.0, lag or 0.0)


# Dead letters still to publish (migration 0007: pending and not on the bus). The flag
# stays set after the PubAck, until the dlq-monitor's record clears it.
_DEAD = """
SELECT id, type, priority, attempts, last_error, finished_at, trace_parent
  FROM tasks
 WHERE dead_letter_pending AND dead_letter_seq IS NULL
 ORDER BY updated_at
 LIMIT $1
   FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class DeadTask:
    """A task that failed for good and whose dead letter is not yet on the bus."""

    task_id: uuid.UUID
    type: str
    priority: str
    attempts: int
    error: str | None
    failed_at: dt.datetime | None
    trace_parent: str | None


async def lock_dead(conn: asyncpg.Connection, limit: int) -> list[DeadTask]:
    """Lock up to ``limit`` tasks whose dead letter is still to publish.

    Call inside a transaction. A dead letter already on the bus (PubAck'd, not yet
    recorded) is not returned until :func:`rearm_lost_dead_letters` finds it gone.
    """
    rows = await conn.fetch(_DEAD, limit)
    return [
        DeadTask(
            r["id"],
            r["type"],
            r["priority"],
            r["attempts"],
            r["last_error"],
            r["finished_at"],
            r["trace_parent"],
        )
        for r in rows
    ]


async def mark_dead_published(
    conn: asyncpg.Connection, published: Sequence[tuple[uuid.UUID, int]], stream: str
) -> None:
    """Remember where PubAck'd dead letters are (same transaction as :func:`lock_dead`).

    ``published`` holds ``(task_id, stream sequence of the PubAck)``; ``stream`` is the
    dead-letter stream's identity (its creation time). ``dead_letter_pending`` stays
    set: only the dlq-monitor's record (:func:`taskflow_common.store.deadletters.record`)
    clears it, so a dead letter the bus loses is published again.
    """
    if published:
        await conn.execute(
            """UPDATE tasks AS t SET dead_letter_seq = u.seq, dead_letter_stream = $3
                 FROM unnest($1::uuid[], $2::bigint[]) AS u(id, seq)
                WHERE t.id = u.id AND t.dead_letter_pending""",
            [p[0] for p in published],
            [p[1] for p in published],
            stream,
        )


async def rearm_lost_dead_letters(conn: asyncpg.Connection, stream: str, first_seq: int) -> int:
    """Mark published dead letters that the bus no longer holds to be published again.

    ``stream`` is the dead-letter stream's identity now and ``first_seq`` its first
    stored sequence: a message put into another incarnation of the stream, or below
    ``first_seq`` (aged out after ``DLQ_MAX_AGE``, purged), is gone. Returns how many
    were re-armed (their statement notifies the dispatcher's channel).
    """
    status = await conn.execute(
        """UPDATE tasks SET dead_letter_seq = NULL, dead_letter_stream = NULL
            WHERE dead_letter_pending AND dead_letter_seq IS NOT NULL
              AND (dead_letter_stream IS DISTINCT FROM $1 OR dead_letter_seq < $2)""",
        stream,
        first_seq,
    )
    return int(status.split()[-1])


async def redispatch_waiting(conn: asyncpg.Connection, older_than_s: float = 0.0) -> int:
    """Mark published-but-unclaimed tasks due again; return how many.

    With ``older_than_s == 0`` every such task is re-queued: used when the task stream
    was found recreated (its messages are gone). With a positive age only the rows with
    no recorded stream sequence are (the others are checked against the stream, see
    :mod:`taskflow_common.store.waiting`): the safety net for a message lost any other
    way. A copy that still exists is fenced by the dispatch number and acked as stale.

    A row with no ``dispatched_at`` counts from its last change (``updated_at``): a task
    claimed through the "publish not yet recorded" branch (the dispatcher died between
    the PubAck and its commit) and then interrupted is queued with no record of a
    publish, and its message may be gone (issue 11, item 3).
    """
    # Rows are locked in id order, skipping any another transaction holds (a claim, a
    # cancel): as every bulk lock of task rows, so that it never deadlocks with a
    # claim_many (issue 11); a skipped row is looked at again on the next round.
    status = await conn.execute(
        """UPDATE tasks SET dispatch_pending = true
            WHERE id IN (SELECT id FROM tasks
                          WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending
                            AND ($1 = 0 OR stream_seq IS NULL)
                            AND (dispatched_at <= now() - make_interval(secs => $1)
                                 OR (dispatched_at IS NULL
                                     AND updated_at <= now() - make_interval(secs => $1)))
                          ORDER BY id
                            FOR UPDATE SKIP LOCKED)""",
        older_than_s,
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class Expired:
    """A ``started`` execution whose lease ran out while its task still points at it."""

    task_id: uuid.UUID
    attempt: int
    failed_attempts: int
    worker_id: str


async def expired_leases(conn: asyncpg.Connection, limit: int) -> list[Expired]:
    """List up to ``limit`` running attempts whose worker stopped renewing the lease."""
    rows = await conn.fetch(
        """SELECT e.task_id, e.attempt, t.failed_attempts, e.worker_id
             FROM task_executions e
             JOIN tasks t ON t.id = e.task_id AND t.attempts = e.attempt
                         AND t.status = 'processing'
            WHERE e.status = 'started' AND e.lease_expires_at < now()
            ORDER BY e.lease_expires_at
            LIMIT $1""",
        limit,
    )
    return [Expired(r["task_id"], r["attempt"], r["failed_attempts"], r["worker_id"]) for r in rows]


async def close_orphans(conn: asyncpg.Connection) -> int:
    """End ``started`` executions with an expired lease whose task has moved on.

    (e.g. the task was cancelled while its worker was gone). Returns how many.
    """
    # Execution rows locked in id order, skipping busy ones (next round), like every bulk
    # lock; the task rows are only read, never locked, so the task-first order holds.
    status = await conn.execute(
        """UPDATE task_executions e
              SET status = 'abandoned', finished_at = now(),
                  error = coalesce(e.error, 'worker lost (lease expired) after the task moved on'),
                  duration_ms = extract(epoch FROM now() - e.started_at) * 1000
            WHERE e.id IN (
                  SELECT x.id FROM task_executions x
                   WHERE x.status = 'started' AND x.lease_expires_at < now()
                     AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = x.task_id
                                        AND t.status = 'processing' AND t.attempts = x.attempt)
                   ORDER BY x.id
                     FOR UPDATE SKIP LOCKED)
              AND e.status = 'started' AND e.lease_expires_at < now()"""
    )
    return int(status.split()[-1])
