"""The outbox sweeper: publish due tasks and pending dead letters, woken by ``LISTEN``.

A pass publishes one batch of due tasks with async PubAcks and records each acked
publish in the same transaction that locked the rows (:meth:`OutboxSweeper.publish_due`);
dead letters are published only when one may be pending
(:meth:`OutboxSweeper.dead_letters_due`). Woken by ``LISTEN taskflow_outbox`` within
milliseconds of a commit; otherwise the sweeper sleeps until the next ``run_at`` or
``DISPATCHER_POLL_INTERVAL``, whichever is first, so a lost notification delays, never
loses. The LISTEN connection is a :class:`taskflow_common.listener.Listener` (reconnect
with backoff, termination listener, a keepalive every second).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.js import api
from opentelemetry import trace

from taskflow_common import tracing
from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.lifecycle import wait_any
from taskflow_common.listener import Listener
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.messages import DeadLetter, TaskMessage
from taskflow_common.retry import Backoff
from taskflow_common.store import outbox
from taskflow_common.store.rows import rfc3339
from taskflow_common.subjects import HEADER_MSG_ID, HEADER_TRACEPARENT, PRIORITIES, Names
from taskflow_dispatcher.dead_letter_check import dlq_stream
from taskflow_dispatcher.metrics import DispatcherMetrics
from taskflow_dispatcher.settings import DispatcherSettings

log = get_logger(__name__)

GATHER_S = 0.002
"""Under load, how long a woken outbox loop waits so that its next pass carries more rows
(seconds). Only after a pass that published more than one task: at idle a task is
published as soon as its notification arrives."""
DEAD_BATCH = 100
"""Dead letters published per pass at most."""
LISTEN_KEEPALIVE_S = 1.0
"""Seconds between two ``SELECT 1`` on the idle LISTEN connection."""
OUTAGE_BACKOFF_S = 0.05
"""First pause of the pass loop after a failed pass (seconds; doubles up to 2 s)."""


@dataclass(frozen=True, slots=True)
class Pass:
    """One outbox pass: ``published`` PubAck'd, ``failed`` not (they stay due), and
    ``next_due_in``, seconds until the next pending task outside the batch is due
    (<= 0: now; None: nothing pending)."""

    published: int
    failed: int
    next_due_in: float | None


class OutboxSweeper:
    """Moves due tasks and pending dead letters from Postgres onto JetStream.

    :meth:`run` holds the LISTEN connection and runs passes until its stop event is set;
    ``wake`` starts the next pass early (set by notifications and the stream watch).
    """

    def __init__(
        self,
        settings: DispatcherSettings,
        db: Database,
        bus: Bus,
        metrics: DispatcherMetrics,
        errors: LoopErrors | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self.names: Names = bus.names
        self.wake = asyncio.Event()
        self.tracer = trace.get_tracer("taskflow.dispatcher")
        # Dead letters to look for: yes at start (one may have been left pending).
        self.dead_hint = True
        self.dead_checked_at = 0.0
        self.errors = errors
        self._busy = False
        self.listener = Listener(
            settings,
            outbox.CHANNEL,
            self._notified,
            on_connect=self._listening,
            keepalive_s=LISTEN_KEEPALIVE_S,
            log_as="listen",
        )

    async def publish_due(self) -> Pass:
        """Publish one batch of due tasks; return the :class:`Pass` (counts, next due).

        Four round trips: ``BEGIN``, lock the due rows and read the next due time
        (:func:`~taskflow_common.store.outbox.lock_due_pass`), mark the PubAck'd ones
        dispatched, ``COMMIT``. Raises UnavailableError (or a driver error) when nothing
        could be published.
        """
        async with self.db.acquire() as conn, conn.transaction():
            found = await outbox.lock_due_pass(conn, self.settings.batch_size)
            due = found.due
            if not due:
                return Pass(0, 0, found.next_due_in)
            items = []
            spans = []
            for d in due:
                span = self.tracer.start_span(
                    "task publish",
                    context=tracing.context_from_traceparent(d.trace_parent),
                    kind=trace.SpanKind.PRODUCER,
                    attributes={
                        "taskflow.task_id": str(d.task_id),
                        "taskflow.attempt": d.attempt,
                        "messaging.destination.name": self.names.task_subject(d.priority),  # type: ignore[arg-type]
                    },
                )
                spans.append(span)
                headers = {HEADER_MSG_ID: self.names.task_msg_id(str(d.task_id), d.dispatch)}
                if d.trace_parent:
                    # Attempts are children of the submitting request (see issue design).
                    headers[HEADER_TRACEPARENT] = d.trace_parent
                message = TaskMessage(d.task_id, d.attempt, d.dispatch, d.priority)  # type: ignore[arg-type]
                items.append(
                    (self.names.task_subject(d.priority), message.encode(), headers)  # type: ignore[arg-type]
                )
            results = await self.bus.publish_batch(items)
            published = []
            stream_seqs = []
            published_spans = []
            errors: list[BaseException] = []
            for d, result, span in zip(due, results, spans, strict=True):
                if isinstance(result, api.PubAck):
                    published.append(d)
                    stream_seqs.append(result.seq)
                    published_spans.append(span)
                else:
                    errors.append(result)
                    span.set_status(trace.StatusCode.ERROR, repr(result))
                span.end()
            await outbox.mark_dispatched(conn, published, stream_seqs)
        self.metrics.published_batch([d.priority for d in published], len(errors))
        if published:
            await self.bus.ring([p for p in PRIORITIES if any(d.priority == p for d in published)])
            if log.is_enabled(10):
                for d, span in zip(published, published_spans, strict=True):
                    # In the publish span, so the line carries its trace and span ids.
                    with trace.use_span(span, end_on_exit=False):
                        log.debug("task_published", task_id=str(d.task_id), attempt=d.attempt)
        if errors and not published:
            raise UnavailableError(f"publish failed for {len(errors)} tasks: {errors[0]!r}")
        return Pass(len(published), len(errors), found.next_due_in)

    async def publish_dead_letters(self) -> int:
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

    def dead_letters_due(self, now: float) -> bool:
        """Whether this pass should look for pending dead letters (``now``: loop seconds).

        Only when one may be pending: a ``taskflow_outbox`` notification said so
        (payload :data:`~taskflow_common.store.outbox.DEAD_LETTER_PAYLOAD`), the last
        look found a full batch or failed, the listener (re)connected, or
        ``DISPATCHER_POLL_INTERVAL`` passed since the last look (the fallback for a
        notification lost while nobody listened). Clears the hint when it says yes.
        """
        if self.dead_hint or now - self.dead_checked_at >= self.settings.poll_interval:
            self.dead_hint = False
            self.dead_checked_at = now
            return True
        return False

    def _notified(self, payload: str) -> None:
        """A ``taskflow_outbox`` notification: something is due (maybe a dead letter)."""
        if payload == outbox.DEAD_LETTER_PAYLOAD:
            self.dead_hint = True
        self.wake.set()

    def _listening(self) -> None:
        """The LISTEN (re)connected: catch up on anything committed meanwhile, dead
        letters too."""
        self.dead_hint = True
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the LISTEN connection and publish due work until ``stop`` is set.

        Never raises for an exception of one pass, outage or not: both loops run under
        :func:`~taskflow_common.loops.run_loop` (``loop_failed`` with ``loop="outbox"`` or
        ``"listen"``, counted in ``taskflow_loop_errors_total``, backed off).
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(self._sweep(stop))
            group.create_task(self._listen(stop))

    async def _listen(self, stop: asyncio.Event) -> None:
        """Keep the LISTEN connection; an error that is not an outage starts it over."""

        async def hold() -> None:
            await self.listener.run(stop)

        await run_loop("listen", hold, stop, errors=self.errors)

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Publish due work until ``stop``; back off after a failed pass.

        A pass is :meth:`publish_due` (4 round trips; it also says when the next task is
        due) plus, only when :meth:`dead_letters_due` says so, :meth:`publish_dead_letters`,
        then the wait :meth:`_pass` chooses. After a pass that raised it waits
        :data:`OUTAGE_BACKOFF_S`, doubling to 2 s (:class:`~taskflow_common.retry.Backoff`).
        """
        self._busy = False
        await run_loop(
            "outbox",
            lambda: self._pass(stop),
            stop,
            errors=self.errors,
            backoff=Backoff(initial_s=OUTAGE_BACKOFF_S),
        )

    async def _pass(self, stop: asyncio.Event) -> None:
        """One pass and the wait after it (the wait is here, not in ``run_loop``, because
        ``wake`` is cleared before the pass: a notification that arrives during the pass
        must end the wait at once, not be cleared away).

        Under load (the last pass published more than one task) a wake-up waits
        :data:`GATHER_S` before the pass so that it carries more rows; at idle a
        notification starts the pass at once.
        """
        if self._busy and self.wake.is_set():
            await wait_any(stop, None, GATHER_S)
        self.wake.clear()
        loop = asyncio.get_running_loop()
        try:
            done = await self.publish_due()
            if self.dead_letters_due(loop.time()):
                dead = await self.publish_dead_letters()
                if dead >= DEAD_BATCH:
                    self.dead_hint = True
        except BaseException:
            self.dead_hint = True  # look again after the backoff
            raise
        self._busy = done.published > 1
        next_due = done.next_due_in
        if (
            done.published + done.failed >= self.settings.batch_size
            or done.failed
            or self.dead_hint
            or (next_due is not None and next_due <= 0)
        ):
            return
        timeout = self.settings.poll_interval
        if next_due is not None:
            timeout = min(timeout, next_due)
        await wait_any(stop, self.wake, timeout)
