"""The dispatcher's SQL for tasks waiting on the bus: which stream, which message.

A task is *waiting on the bus* when it was published and nobody claimed it yet
(``status IN ('queued', 'retrying') AND NOT dispatch_pending``). Postgres, not the stream,
is the record of what exists (JetStream acknowledges a publish before it is on disk), so
the dispatcher checks that each waiting task's message is still in the stream and
re-publishes those that are not (issue 11, items 6 and 9):

- the stream's identity (its creation time) is remembered in ``bus_streams``: a stream
  created again, by whoever, lost every message, and :func:`adopt_stream` re-queues every
  waiting task when it sees a new one;
- each publish records its PubAck's stream sequence (``tasks.stream_seq``, set by
  :func:`taskflow_common.store.outbox.mark_dispatched`); :func:`suspects` reads the
  waiting rows whose message may be gone, :func:`requeue_lost` re-queues those the
  stream does not hold.

Migration 0006 adds the column, the ``tasks_waiting_on_stream`` index and the table.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from taskflow_common.subjects import PRIORITIES, Priority


async def adopt_stream(conn: asyncpg.Connection, name: str, created: str) -> int | None:
    """Remember ``created`` as stream ``name``'s identity; re-queue if it changed.

    One transaction: lock the stream's row, compare, and when the stream was created
    again since it was last seen, mark every task waiting on the bus due again (its
    message went with the old stream; a copy that survived is fenced by the dispatch
    number). Returns how many were re-queued, or None when the identity is unchanged or
    seen for the first time (nothing to compare with). Concurrent dispatchers serialise
    on the row: only the first re-queues.
    """
    async with conn.transaction():
        known = await conn.fetchval(
            "SELECT created FROM bus_streams WHERE name = $1 FOR UPDATE", name
        )
        if known == created:
            return None
        await conn.execute(
            """INSERT INTO bus_streams (name, created) VALUES ($1, $2)
               ON CONFLICT (name) DO UPDATE SET created = $2, updated_at = now()""",
            name,
            created,
        )
        if known is None:
            return None
        return await _requeue_all(conn)


async def _requeue_all(conn: asyncpg.Connection) -> int:
    # Locks in id order and skips busy rows, like every bulk lock of task rows (issue 11).
    status = await conn.execute(
        """UPDATE tasks SET dispatch_pending = true
            WHERE id IN (SELECT id FROM tasks
                          WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending
                          ORDER BY id
                            FOR UPDATE SKIP LOCKED)"""
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class Suspect:
    """A task waiting on the bus whose message the stream may no longer hold."""

    task_id: uuid.UUID
    dispatch: int
    stream_seq: int
    priority: str


# The ranges where a lost message can hide, per priority (each priority has one consumer):
# at or below what the consumer has delivered (delivered: acked or in flight; a message
# acked without a claim is gone) and above the stream's last sequence (lost with the tail
# of a crashed store). Messages above the delivered sequence were never delivered, and a
# work-queue stream only removes a message when it is acked, so they are there. Each
# range is an index range of tasks_waiting_on_stream (a BitmapOr).
_SUSPECTS = """
SELECT id, dispatch_seq, stream_seq, priority
  FROM tasks
 WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending
   AND ((priority = 'high' AND (stream_seq <= $1 OR stream_seq > $4))
     OR (priority = 'normal' AND (stream_seq <= $2 OR stream_seq > $4))
     OR (priority = 'low' AND (stream_seq <= $3 OR stream_seq > $4)))
 ORDER BY stream_seq
 LIMIT $5
"""


async def suspects(
    conn: asyncpg.Connection,
    first_seq: int,
    last_seq: int,
    delivered: Mapping[Priority, int],
    limit: int,
) -> list[Suspect]:
    """Waiting tasks whose message may be gone, lowest sequence first, at most ``limit``.

    ``first_seq``/``last_seq``: the stream's, read before this call; ``delivered``: each
    priority's consumer's last delivered stream sequence (0 when it has none). Rows with
    no ``stream_seq`` are never suspects (``redispatch_waiting`` ages them instead).
    """
    below = [max(first_seq - 1, delivered.get(p, 0)) for p in PRIORITIES]
    rows = await conn.fetch(_SUSPECTS, *below, last_seq, limit)
    return [Suspect(r["id"], r["dispatch_seq"], r["stream_seq"], r["priority"]) for r in rows]


# Waiting rows above what their priority's consumer delivered, up to the stream's last
# sequence: the stream holds as many such messages (the consumer's num_pending) unless
# it lost some. An index-only range count per priority on tasks_waiting_on_stream.
_UNDELIVERED = """
SELECT priority, count(*) AS n
  FROM tasks
 WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending
   AND ((priority = 'high' AND stream_seq > $1 AND stream_seq <= $4)
     OR (priority = 'normal' AND stream_seq > $2 AND stream_seq <= $4)
     OR (priority = 'low' AND stream_seq > $3 AND stream_seq <= $4))
 GROUP BY priority
"""


async def undelivered_counts(
    conn: asyncpg.Connection, delivered: Mapping[Priority, int], last_seq: int
) -> dict[str, int]:
    """Per priority, the waiting rows whose sequence is in ``(delivered, last_seq]``."""
    rows = await conn.fetch(_UNDELIVERED, *(delivered.get(p, 0) for p in PRIORITIES), last_seq)
    return {r["priority"]: r["n"] for r in rows}


async def waiting_at(
    conn: asyncpg.Connection, priority: str, seqs: Sequence[int], limit: int
) -> list[Suspect]:
    """The waiting rows of ``priority`` whose recorded sequence is one of ``seqs``."""
    rows = await conn.fetch(
        """SELECT id, dispatch_seq, stream_seq, priority FROM tasks
            WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending
              AND priority = $1 AND stream_seq = ANY($2::bigint[])
            ORDER BY stream_seq LIMIT $3""",
        priority,
        list(seqs),
        limit,
    )
    return [Suspect(r["id"], r["dispatch_seq"], r["stream_seq"], r["priority"]) for r in rows]


async def requeue_lost(conn: asyncpg.Connection, lost: Sequence[Suspect]) -> int:
    """Mark due again the tasks whose message the stream does not hold; return how many.

    A row is re-queued only while it still waits on the very message checked (same
    dispatch and sequence): one claimed meanwhile is left alone. Locks in id order,
    skipping busy rows (looked at again next time).
    """
    if not lost:
        return 0
    status = await conn.execute(
        """UPDATE tasks SET dispatch_pending = true
            WHERE id IN (SELECT t.id
                           FROM tasks t
                           JOIN unnest($1::uuid[], $2::int[], $3::bigint[]) AS u(id, d, seq)
                             ON t.id = u.id AND t.dispatch_seq = u.d AND t.stream_seq = u.seq
                          WHERE t.status IN ('queued', 'retrying') AND NOT t.dispatch_pending
                          ORDER BY t.id
                            FOR UPDATE OF t SKIP LOCKED)""",
        [s.task_id for s in lost],
        [s.dispatch for s in lost],
        [s.stream_seq for s in lost],
    )
    return int(status.split()[-1])
