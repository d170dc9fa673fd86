"""Publish pending dead letters of failed tasks to the dead-letter stream.

A failed task's row carries ``dead_letter_pending`` until the dlq-monitor records its
dead letter (migration 0007); each pass of the outbox sweeper that may find one publishes
up to :data:`DEAD_BATCH` of them here, with the task's trace as parent and a message id
that makes a re-publish of the same failure a duplicate the stream drops.
"""

from __future__ import annotations

from nats.js import api
from opentelemetry import trace

from taskflow_common import tracing
from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.messages import DeadLetter
from taskflow_common.store import outbox
from taskflow_common.store.rows import rfc3339
from taskflow_common.subjects import HEADER_MSG_ID, Names
from taskflow_dispatcher.dead_letter_check import dlq_stream
from taskflow_dispatcher.metrics import DispatcherMetrics

log = get_logger("taskflow_dispatcher.sweeper")

DEAD_BATCH = 100
"""Dead letters published per pass at most."""


class DeadLetterPublisher:
    """Moves pending dead letters from Postgres onto ``<prefix>.dlq``."""

    def __init__(
        self, db: Database, bus: Bus, metrics: DispatcherMetrics, tracer: trace.Tracer
    ) -> None:
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self.names: Names = bus.names
        self.tracer = tracer

    async def publish(self) -> int:
        """Publish up to :data:`DEAD_BATCH` pending dead letters to ``<prefix>.dlq``.

        Returns how many were PubAck'd; their stream sequence and the stream's identity
        are recorded, and they stay pending until the dlq-monitor records them (the
        :class:`~taskflow_dispatcher.dead_letter_check.DeadLetterCheck` publishes again
        what the stream loses meanwhile). Raises UnavailableError
        (or a driver error) when there were some and none could be published.
        """
        async with self.db.acquire() as conn, conn.transaction():
            dead = await outbox.lock_dead(conn, DEAD_BATCH)
            if not dead:
                return 0
            items = []
            spans = []
            for t in dead:
                # The dead-letter span is a child of the submitting request; the message
                # carries the span's own context, so the dlq-monitor's record span is its
                # child (request -> dead letter -> record).
                span = self.tracer.start_span(
                    "task dead-letter",
                    context=tracing.context_from_traceparent(t.trace_parent),
                    kind=trace.SpanKind.PRODUCER,
                    attributes={
                        "taskflow.task_id": str(t.task_id),
                        "taskflow.type": t.type,
                        "taskflow.attempt": t.attempts,
                    },
                )
                spans.append(span)
                letter = DeadLetter(
                    reason="failed",
                    task_id=t.task_id,
                    type=t.type,
                    priority=t.priority,
                    attempts=t.attempts,
                    error=t.error,
                    failed_at=rfc3339(t.failed_at),
                    trace_id=tracing.trace_id_of(t.trace_parent),
                )
                headers = {HEADER_MSG_ID: self.names.dlq_msg_id(str(t.task_id), t.attempts)}
                tracing.inject(headers, trace.set_span_in_context(span))
                items.append((self.names.dlq_subject, letter.encode(), headers))
            try:
                # Where the messages go: read before publishing, so a stream recreated
                # meanwhile only makes the dead-letter check publish once more.
                where = await dlq_stream(self.bus)
                results = await self.bus.publish_batch(items)
            except BaseException:
                for span in spans:
                    span.end()
                raise
            done = []
            for t, r, span in zip(dead, results, spans, strict=True):
                if isinstance(r, api.PubAck):
                    done.append((t, r.seq, span))
                else:
                    span.set_status(trace.StatusCode.ERROR, repr(r))
                    span.end()
            await outbox.mark_dead_published(
                conn, [(t.task_id, seq) for t, seq, _ in done], where.identity if where else ""
            )
        self.metrics.publish_errors.inc(len(dead) - len(done))
        for t, _, span in done:
            self.metrics.dead_letter_published(t.type, t.priority)
            with trace.use_span(span, end_on_exit=True):
                log.warning(
                    "task_dead_lettered",
                    task_id=str(t.task_id),
                    type=t.type,
                    attempt=t.attempts,
                    error=t.error,
                )
        if len(done) < len(dead) and not done:
            raise UnavailableError("dead-letter publish failed")
        return len(done)
