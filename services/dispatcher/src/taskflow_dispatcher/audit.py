"""The message audit: re-publish exactly the waiting tasks whose message the stream lost.

Postgres is the record of what exists; JetStream acknowledges a publish before it is on
disk and can lose a message (a crashed store, a message acked without a claim, a purge).
Every ``DISPATCHER_AUDIT_INTERVAL`` (default 5 s) the audit checks the tasks waiting on
the bus (published, not claimed) against the stream, cheaply enough to run that often
over any backlog (issue 11, item 9):

1. one ``stream_info`` (first and last sequence; its identity is the stream watch's) and
   one ``consumer_info`` per priority (the last delivered sequence);
2. one indexed query for the *suspects*: waiting rows whose recorded sequence is at or
   below what their priority's consumer delivered, or above the stream's last sequence.
   A row above the delivered sequence was never delivered, and a work-queue stream drops
   a message only when it is acked, so it is there: a healthy backlog has almost no
   suspects (only messages in flight between a worker's fetch and its claim);
3. below the stream's first sequence a message is gone; any other suspect is looked up
   (``get_msg``, many in flight) and is gone when the stream has nothing at its sequence
   or another message (a stream whose sequences restarted);
   the never-delivered rows are counted per priority (one index-only count) against the
   consumer's ``num_pending``; only when Postgres waits on more than the stream holds
   (a message deleted or lost from the middle) is the stream asked which sequences it no
   longer holds (one ``STREAM.INFO`` with ``deleted_details``);
4. the gone ones are marked due again, each only while it still waits on the very
   message checked: the outbox sweeper publishes them under a new dispatch number.

Rows with no recorded sequence (published before migration 0006, or claimed before their
publish was recorded and then interrupted) are aged by the reaper instead
(``DISPATCHER_REDISPATCH_AFTER``).
"""

from __future__ import annotations

from taskflow_common.bus import Bus
from taskflow_common.bus.streams import StreamState
from taskflow_common.db import Database
from taskflow_common.logs import get_logger
from taskflow_common.store import waiting
from taskflow_common.subjects import PRIORITIES

log = get_logger(__name__)

SUSPECTS_PER_ROUND = 2000
"""Suspects checked per round at most (lowest sequence first; the rest next round)."""


class MessageAudit:
    """Checks waiting tasks against the stream; ``on_lost()`` runs after a re-queue."""

    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus

    async def audit_once(self, state: StreamState) -> int:
        """Re-queue the waiting tasks whose message is gone; return how many.

        ``state`` must be read before this call (what was published after it is above
        its last sequence and gets looked up, never taken as lost unasked). Raises
        UnavailableError (or a driver error) when NATS or Postgres is away.
        """
        positions = await self.bus.consumer_positions()
        delivered = {p: pos.delivered for p, pos in positions.items()}
        async with self.db.acquire() as conn:
            found = await waiting.suspects(
                conn, state.first_seq, state.last_seq, delivered, SUSPECTS_PER_ROUND
            )
            counts = await waiting.undelivered_counts(conn, delivered, state.last_seq)
        names = self.bus.names
        ask = [s.stream_seq for s in found if s.stream_seq >= state.first_seq]
        ids = await self.bus.message_ids(ask) if ask else {}
        lost = [
            s
            for s in found
            if s.stream_seq < state.first_seq
            or ids.get(s.stream_seq) != names.task_msg_id(str(s.task_id), s.dispatch)
        ]
        # Never delivered, yet fewer in the stream than Postgres waits on: the stream lost
        # some (a crashed store, a deleted message). Only then ask which ones.
        short = [p for p in PRIORITIES if counts.get(p, 0) > positions[p].pending]
        if short:
            gone = await self.bus.deleted_seqs()
            async with self.db.acquire() as conn:
                for priority in short:
                    pos = positions[priority]
                    seqs = [q for q in gone if pos.delivered < q <= state.last_seq]
                    if seqs:
                        lost += await waiting.waiting_at(conn, priority, seqs, SUSPECTS_PER_ROUND)
        if not lost:
            return 0
        async with self.db.acquire() as conn:
            requeued = await waiting.requeue_lost(conn, lost)
        if requeued:
            log.warning(
                "tasks_redispatched",
                count=requeued,
                reason="message not in the stream",
                stream=names.stream,
            )
        return requeued
