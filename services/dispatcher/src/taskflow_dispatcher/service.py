"""The dispatcher: the only path from Postgres to JetStream.

Four loops share one pool and one NATS connection:

- **outbox**: publish due tasks (and pending dead letters) in batches with async
  PubAcks; record each acked publish in the same transaction that locked the rows.
  Woken by ``LISTEN taskflow_outbox`` within milliseconds of a commit; otherwise it
  sleeps until the next ``run_at`` or ``DISPATCHER_POLL_INTERVAL``, whichever is first,
  so a lost notification delays, never loses. Dead letters are looked for only when
  the notification says one is pending, and at least every poll interval;
- **listener**: keeps the LISTEN connection alive across Postgres restarts;
- **reaper**: ends attempts whose lease expired (worker gone) as ``abandoned`` and
  schedules the retry; re-queues tasks published but unclaimed for too long. Leases
  are only believed once Postgres has answered promptly for a whole lease period
  (:class:`LeaseTrust`), so an outage is never booked as lost workers;
- **stream watch**: recreates the streams if they vanish (NATS restarted on an empty
  store) and re-queues every published-but-unclaimed task, whose messages are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.js import api
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from taskflow_common import db as dbmod
from taskflow_common import tracing
from taskflow_common.backoff import backoff_delay
from taskflow_common.bus import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.bus import Bus, connect
from taskflow_common.db import TRANSIENT_ERRORS as PG_ERRORS
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import UnavailableError
from taskflow_common.lifecycle import ready, wait_any
from taskflow_common.logs import get_logger
from taskflow_common.messages import DeadLetter, TaskMessage
from taskflow_common.metrics import DispatcherMetrics, new_registry
from taskflow_common.metrics import serve as serve_metrics
from taskflow_common.store import attempts, outbox
from taskflow_common.store.rows import rfc3339
from taskflow_common.subjects import HEADER_MSG_ID, HEADER_TRACEPARENT, PRIORITIES, Names
from taskflow_dispatcher.sampler import Sampler
from taskflow_dispatcher.settings import DispatcherSettings

log = get_logger(__name__)
OUTAGE: tuple[type[BaseException], ...] = (UnavailableError, *PG_ERRORS, *NATS_ERRORS)


class LeaseTrust:
    """Decide whether expired leases mean lost workers, or just a Postgres outage.

    Workers renew their leases through Postgres every ``lease_s / 3``. While Postgres is
    down, restarting or frozen, nobody can renew, and right after it comes back every
    running attempt's lease looks expired although its worker is alive and about to
    renew. So an expired lease is believed only after Postgres has answered the reaper
    promptly (each probe within ``stall_s``) for a whole ``lease_s``: live workers have
    renewed by then, dead ones are abandoned one lease later than otherwise. A dispatcher
    that just started has no such history and waits one lease too. Times are event-loop
    seconds.
    """

    def __init__(self, lease_s: float, stall_s: float) -> None:
        self.lease_s = lease_s
        self.stall_s = stall_s
        self.since: float | None = None

    def answered(self, started: float, ended: float) -> None:
        """Record a probe of Postgres that succeeded (``started``/``ended`` loop times)."""
        if ended - started > self.stall_s:
            self.since = ended  # it hung: Postgres was frozen or overloaded meanwhile
        elif self.since is None:
            self.since = started

    def failed(self) -> None:
        """Record a probe that failed (Postgres unreachable)."""
        self.since = None

    def trusted(self, now: float) -> bool:
        """True when Postgres has answered promptly for at least one lease period."""
        return self.since is not None and now - self.since >= self.lease_s


GATHER_S = 0.002
"""Under load, how long a woken outbox loop waits so that its next pass carries more rows
(seconds). Only after a pass that published more than one task: at idle a task is
published as soon as its notification arrives."""
DEAD_BATCH = 100
"""Dead letters published per pass at most."""


@dataclass(frozen=True, slots=True)
class Pass:
    """One outbox pass: ``published`` PubAck'd, ``failed`` not (they stay due), and
    ``next_due_in``, seconds until the next pending task outside the batch is due
    (<= 0: now; None: nothing pending)."""

    published: int
    failed: int
    next_due_in: float | None


class Dispatcher:
    """Publishes due work; see the module docstring for the loops."""

    def __init__(
        self,
        settings: DispatcherSettings,
        db: Database,
        bus: Bus,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.metrics = DispatcherMetrics(registry or new_registry())
        self.sampler = Sampler(db, bus, self.metrics, settings.metrics_interval)
        self.names: Names = bus.names
        self.wake = asyncio.Event()
        self.tracer = trace.get_tracer("taskflow.dispatcher")
        self.stream_created: str | None = None
        # Dead letters to look for: yes at start (one may have been left pending).
        self.dead_hint = True
        self.dead_checked_at = 0.0
        self.lease_trust = LeaseTrust(
            settings.worker_ack_wait, stall_s=max(0.5, settings.worker_ack_wait / 6)
        )

    # -- outbox ---------------------------------------------------------------------------

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
            published_spans = []
            errors: list[BaseException] = []
            for d, result, span in zip(due, results, spans, strict=True):
                if isinstance(result, api.PubAck):
                    published.append(d)
                    published_spans.append(span)
                else:
                    errors.append(result)
                    span.set_status(trace.StatusCode.ERROR, repr(result))
                span.end()
            await outbox.mark_dispatched(conn, published)
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
        """Publish pending dead letters to ``<prefix>.dlq``; return how many."""
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
                results = await self.bus.publish_batch(items)
            except BaseException:
                for span in spans:
                    span.end()
                raise
            done = []
            for t, r, span in zip(dead, results, spans, strict=True):
                if isinstance(r, api.PubAck):
                    done.append((t, span))
                else:
                    span.set_status(trace.StatusCode.ERROR, repr(r))
                    span.end()
            await outbox.mark_dead_published(conn, [t.task_id for t, _ in done])
        self.metrics.publish_errors.inc(len(dead) - len(done))
        for t, span in done:
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
        """Whether this pass should look for pending dead letters.

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

    async def outbox_loop(self, stop: asyncio.Event) -> None:
        """Publish due work until ``stop``; back off while NATS or Postgres is down.

        A pass is :meth:`publish_due` (4 round trips; it also says when the next task is
        due) plus, only when :meth:`dead_letters_due` says so, :meth:`publish_dead_letters`.
        Under load (the last pass published more than one task) a wake-up waits
        :data:`GATHER_S` before the next pass so that it carries more rows; at idle a
        notification starts the pass at once.
        """
        delay = 0.05
        loop = asyncio.get_running_loop()
        busy = False
        while not stop.is_set():
            if busy and self.wake.is_set():
                await wait_any(stop, None, GATHER_S)
            self.wake.clear()
            try:
                done = await self.publish_due()
                dead = 0
                if self.dead_letters_due(loop.time()):
                    try:
                        dead = await self.publish_dead_letters()
                    except BaseException:
                        self.dead_hint = True
                        raise
                    if dead >= DEAD_BATCH:
                        self.dead_hint = True
            except OUTAGE as exc:
                log.warning("dispatch_unavailable", error=repr(exc), retry_in_s=delay)
                await wait_any(stop, None, delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            busy = done.published > 1
            next_due = done.next_due_in
            if (
                done.published + done.failed >= self.settings.batch_size
                or done.failed
                or self.dead_hint
                or (next_due is not None and next_due <= 0)
            ):
                continue
            timeout = self.settings.poll_interval
            if next_due is not None:
                timeout = min(timeout, next_due)
            await wait_any(stop, self.wake, timeout)

    # -- LISTEN ------------------------------------------------------------------------------

    async def listener_loop(self, stop: asyncio.Event) -> None:
        """Hold a LISTEN connection; reconnect after Postgres restarts."""

        def notified(conn: object, pid: int, channel: str, payload: str) -> None:
            if payload == outbox.DEAD_LETTER_PAYLOAD:
                self.dead_hint = True
            self.wake.set()

        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await dbmod.connect(self.settings)
                await conn.add_listener(outbox.CHANNEL, notified)
                # Catch up on anything committed while we were away, dead letters too.
                self.dead_hint = True
                self.wake.set()
                while not stop.is_set() and not conn.is_closed():
                    await wait_any(stop, None, 1.0)
                    await conn.fetchval("SELECT 1")  # notices a dead connection
            except PG_ERRORS as exc:
                log.warning("listen_unavailable", error=repr(exc))
                await wait_any(stop, None, 1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(*PG_ERRORS):
                        await conn.close(timeout=2)

    # -- reaper ------------------------------------------------------------------------------

    async def reap_once(self) -> int:
        """Abandon attempts whose lease expired; return how many.

        Nothing is abandoned while :attr:`lease_trust` says the leases cannot be
        believed yet (Postgres was just away, or this probe hung).
        """
        s = self.settings
        count = 0
        loop = asyncio.get_running_loop()
        async with self.db.acquire() as conn:
            started = loop.time()
            try:
                expired = await outbox.expired_leases(conn, 200)
            except OUTAGE:
                self.lease_trust.failed()
                raise
            ended = loop.time()
            self.lease_trust.answered(started, ended)
            if expired and not self.lease_trust.trusted(ended):
                log.info("reap_deferred", expired=len(expired), reason="postgres was away")
                expired = []
            for e in expired:
                outcome = await attempts.abandon(
                    conn,
                    e.task_id,
                    e.attempt,
                    reason=f"worker {e.worker_id} lost: lease expired before the attempt ended",
                    backoff_s=backoff_delay(
                        e.failed_attempts + 1, s.worker_backoff_base, s.worker_backoff_max
                    ),
                )
                if outcome is not None:
                    count += 1
                    log.warning(
                        "attempt_abandoned",
                        task_id=str(e.task_id),
                        attempt=e.attempt,
                        worker_id=e.worker_id,
                        task_status=outcome.status,
                    )
            await outbox.close_orphans(conn)
            requeued = await outbox.redispatch_waiting(conn, s.redispatch_after)
            if requeued:
                log.warning("tasks_redispatched", count=requeued, reason="unclaimed too long")
        return count

    async def reaper_loop(self, stop: asyncio.Event) -> None:
        """Run :meth:`reap_once` every ``DISPATCHER_REAP_INTERVAL``."""
        while not stop.is_set():
            try:
                await self.reap_once()
            except OUTAGE as exc:
                self.lease_trust.failed()
                log.warning("reaper_unavailable", error=repr(exc))
            await wait_any(stop, None, self.settings.reap_interval)

    # -- stream watch --------------------------------------------------------------------------

    async def check_stream(self) -> None:
        """Recreate vanished streams; re-queue published-but-unclaimed tasks if so."""
        created = await self.bus.stream_created_at()
        if created is None:
            await self.bus.ensure_streams()
            created = await self.bus.stream_created_at()
        if created != self.stream_created:
            if self.stream_created is not None:
                async with self.db.acquire() as conn:
                    n = await outbox.redispatch_waiting(conn, 0.0)
                log.warning("stream_recreated", stream=self.names.stream, requeued=n)
                self.wake.set()
            self.stream_created = created

    async def stream_loop(self, stop: asyncio.Event) -> None:
        """Run :meth:`check_stream` every ``DISPATCHER_STREAM_CHECK_INTERVAL``."""
        while not stop.is_set():
            if self.bus.connected:
                try:
                    await self.check_stream()
                except OUTAGE as exc:
                    log.warning("stream_check_unavailable", error=repr(exc))
            await wait_any(stop, None, self.settings.stream_check_interval)

    async def start(self, stop: asyncio.Event) -> None:
        """Make sure the streams exist (retrying while NATS is down)."""
        while not stop.is_set():
            try:
                created = await self.bus.ensure_streams()
                self.stream_created = await self.bus.stream_created_at()
                if created:
                    async with self.db.acquire() as conn:
                        await outbox.redispatch_waiting(conn, 0.0)
                return
            except OUTAGE as exc:
                log.warning("streams_unavailable", error=repr(exc))
                await wait_any(stop, None, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Run all loops until ``stop`` is set."""
        loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [
            self.outbox_loop,
            self.listener_loop,
            self.reaper_loop,
            self.stream_loop,
            self.sampler.run,
        ]
        async with asyncio.TaskGroup() as group:
            for loop in loops:
                group.create_task(loop(stop))


async def serve(settings: DispatcherSettings, stop: asyncio.Event) -> None:
    """Service body for :func:`taskflow_common.lifecycle.run_service`."""
    try:
        async with (
            open_pool(settings, min_size=1, max_size=4) as db,
            connect(settings, "taskflow-dispatcher", stop=stop) as bus,
        ):
            registry = new_registry()
            dispatcher = Dispatcher(settings, db, bus, registry)
            with serve_metrics(
                registry, settings.metrics_host, settings.metrics_port, "DISPATCHER_METRICS_PORT"
            ) as metrics_server:
                await dispatcher.start(stop)
                ready(stream=bus.names.stream, metrics_port=metrics_server.port)
                await dispatcher.run(stop)
    except UnavailableError:
        if not stop.is_set():
            raise
