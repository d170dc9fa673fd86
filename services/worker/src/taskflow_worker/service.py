"""The worker: fetch by priority, claim, run the handler, record the attempt, settle.

Delivery is at-least-once; Postgres makes execution at-most-once-at-a-time:

1. Fetch at most as many messages as there are free slots (``WORKER_CONCURRENCY``),
   so no message waits in a local buffer while its ack wait runs out; skip priorities
   known to be empty (see :mod:`taskflow_worker.fetcher`).
2. Claim every task of the fetch with one fenced statement that also opens the
   execution rows and their leases (one round trip per fetch). A delivery that did not
   claim is settled without running anything: terminal task or stale copy -> ack;
   attempt owned by a live worker -> ack; owner's lease expired -> the attempt is
   abandoned (counted) and the retry scheduled -> ack.
3. While the handler runs, a heartbeat every ``ack_wait / 3`` sends ``in_progress()``
   and renews the leases, so a long task is never redelivered while it is alive.
4. Record the outcome (retrying while Postgres is briefly away), then ack. Successes
   are recorded in batches, one statement for the attempts that finished together,
   and acked after that commit with one flush per batch
   (:mod:`taskflow_worker.completions`); failures, interrupts and cancels are recorded
   one by one and acked with the server's confirmation. Every path settles its message
   (ack, nak or term).

SIGTERM: stop fetching; give handlers ``WORKER_SHUTDOWN_GRACE``; cancel the rest,
record them as ``interrupted`` (not counted) and nak them for prompt redelivery. Every
ack sent while draining is confirmed by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import orjson
from nats.aio.msg import Msg
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from taskflow_common import tracing
from taskflow_common.backoff import backoff_delay
from taskflow_common.bus import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.bus import Bus, ConsumerGone, ConsumerSettings, Puller, connect
from taskflow_common.db import TRANSIENT_ERRORS as PG_ERRORS
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import ConfigError, MalformedMessage, UnavailableError
from taskflow_common.lifecycle import ready, wait_any
from taskflow_common.logs import EventLogger, bound, get_logger
from taskflow_common.messages import MAX_RAW_BYTES, CancelRequest, DeadLetter, TaskMessage
from taskflow_common.metrics import WorkerMetrics, new_registry
from taskflow_common.metrics import serve as serve_metrics
from taskflow_common.store import attempts
from taskflow_common.subjects import HEADER_MSG_ID, PRIORITIES, Priority
from taskflow_worker.completions import Completions, UnstorableResult
from taskflow_worker.fetcher import Fetcher
from taskflow_worker.handlers import PermanentError, TaskContext, load_modules, lookup
from taskflow_worker.settings import WorkerSettings

log = get_logger(__name__)
OUTAGE: tuple[type[BaseException], ...] = (UnavailableError, *PG_ERRORS, *NATS_ERRORS)

StopReason = Literal["shutdown", "cancelled", "lease_lost"]


@dataclass(eq=False)
class Running:
    """A claimed attempt whose handler is running in this process."""

    claim: attempts.Claim
    msg: Msg
    task: asyncio.Task[Any] | None = None
    stop_reason: StopReason | None = None
    started: float = field(default_factory=time.monotonic)

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler, remembering why (decides how the attempt is recorded)."""
        if self.task is not None and not self.task.done():
            self.stop_reason = self.stop_reason or reason
            self.task.cancel()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, before it is recorded."""

    kind: Literal["succeeded", "failed", "interrupted", "cancelled", "lost"]
    result_json: str = "null"
    error: str = ""
    error_type: str = ""
    permanent: bool = False


class Worker:
    """One worker process: ``WORKER_CONCURRENCY`` slots over the priority consumers."""

    def __init__(
        self,
        settings: WorkerSettings,
        db: Database,
        bus: Bus,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.metrics = WorkerMetrics(
            registry or new_registry(), settings.concurrency, lambda: self.inflight
        )
        self.tracer = trace.get_tracer("taskflow.worker")
        self.inflight = 0
        self.handling: set[asyncio.Task[None]] = set()
        self.running: dict[uuid.UUID, Running] = {}
        self.by_task: dict[uuid.UUID, Running] = {}
        self.slot_free = asyncio.Event()
        self.doorbell = asyncio.Event()
        self.fetcher: Fetcher | None = None
        self.pullers: dict[Priority, Puller] = {}
        self.lease_s = settings.worker_ack_wait
        self.heartbeat_s = max(0.2, settings.worker_ack_wait / 3)
        self.grace_over = False  # set by drain(): no handler may start any more
        # Deliveries (task id -> dispatch) whose claim failed with an outage error: it
        # may have committed anyway, leaving an open attempt owned by this process.
        self.uncertain_claims: dict[uuid.UUID, int] = {}
        # Attempts that may still report a success: running, or waiting to be recorded.
        self.completions = Completions(db, bus, lambda: len(self.running))

    # -- set-up ---------------------------------------------------------------------------

    async def reconcile(self, stop: asyncio.Event) -> None:
        """Create or update the streams and the three consumers (retrying while NATS is down).

        Raises ConsumerConfigMismatch when a consumer cannot be brought to the config.
        """
        delay = 0.1
        while not stop.is_set():
            try:
                await self.bus.ensure_streams()
                await self.bus.ensure_task_consumers(ConsumerSettings.from_settings(self.settings))
                return
            except UnavailableError as exc:
                log.warning("jetstream_unavailable", error=str(exc), retry_in_s=delay)
                await wait_any(stop, None, delay)
                delay = min(delay * 2, 2.0)

    async def open(self, stop: asyncio.Event) -> None:
        """Reconcile consumers, open pullers and subscribe to the doorbell and cancels."""
        await self.reconcile(stop)
        names = self.bus.names
        for p in PRIORITIES:
            self.pullers[p] = await self.bus.puller(names.stream, names.consumer(p))
        self.fetcher = Fetcher(self.pullers, self.settings.max_wait, self.bus.oldest_waiting)

        async def on_wake(msg: Msg) -> None:
            if self.fetcher is not None:
                self.fetcher.wake(msg.data.decode(errors="replace").split(","))
            self.doorbell.set()

        async def on_cancel(msg: Msg) -> None:
            try:
                request = CancelRequest.decode(msg.data)
            except MalformedMessage:
                return
            running = self.by_task.get(request.task_id)
            if running is not None:
                running.stop("cancelled")

        await self.bus.nc.subscribe(names.wake_subject, cb=on_wake)
        await self.bus.nc.subscribe(names.cancel_subject, cb=on_cancel)

    # -- fetching -------------------------------------------------------------------------

    async def fetch_loop(self, stop: asyncio.Event) -> None:
        """Fetch into free slots until ``stop``; spawn one handling task per message."""
        assert self.fetcher is not None
        delay = 0.1
        while not stop.is_set():
            free = self.settings.concurrency - self.inflight
            if free <= 0:
                self.slot_free.clear()
                await wait_any(stop, self.slot_free, 1.0)
                continue
            self.doorbell.clear()
            try:
                batch = await self.fetcher.fetch(free)
            except ConsumerGone as exc:
                log.warning("consumer_gone", error=str(exc))
                await self.reconcile(stop)
                continue
            except OUTAGE as exc:
                log.warning("fetch_unavailable", error=repr(exc), retry_in_s=delay)
                await wait_any(stop, None, delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self.metrics.fetch_round([p for p, _ in batch])
            if not batch:
                await wait_any(stop, self.doorbell, self.settings.poll_timeout)
                continue
            self._start(batch)

    def _start(self, batch: list[tuple[Priority, Msg]]) -> None:
        """Claim a fetch's deliveries together; one handling task per message.

        Each distinct task id goes into one batch claim (a shared future every handling
        task of the batch awaits); a second delivery of a task already in the batch, or
        an undecodable one, is handled alone as before.
        """
        decoded: list[tuple[Priority, Msg, TaskMessage | None]] = []
        deliveries: dict[uuid.UUID, int] = {}
        for priority, msg in batch:
            try:
                message: TaskMessage | None = TaskMessage.decode(msg.data)
            except MalformedMessage:
                message = None
            decoded.append((priority, msg, message))
            if message is not None and message.task_id not in deliveries:
                deliveries[message.task_id] = message.dispatch
        claims: asyncio.Future[dict[uuid.UUID, attempts.Claim]] | None = None
        if deliveries:
            claims = asyncio.ensure_future(self._claim_many(list(deliveries.items())))
        for priority, msg, message in decoded:
            shared = None
            if message is not None and deliveries.get(message.task_id) == message.dispatch:
                del deliveries[message.task_id]  # later copies are handled alone
                shared = claims
            self.inflight += 1
            task = asyncio.create_task(self.handle(priority, msg, shared, message))
            self.handling.add(task)
            task.add_done_callback(self._handled)

    async def _claim_many(
        self, deliveries: list[tuple[uuid.UUID, int]]
    ) -> dict[uuid.UUID, attempts.Claim]:
        async with self.db.acquire() as conn:
            return await attempts.claim_many(
                conn, deliveries, self.settings.worker_id, self.lease_s
            )

    def _handled(self, task: asyncio.Task[None]) -> None:
        self.handling.discard(task)
        self.inflight -= 1
        self.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("handle_crashed", error=f"{exc.__class__.__name__}: {exc}")

    # -- one delivery ---------------------------------------------------------------------

    async def handle(
        self,
        priority: Priority,
        msg: Msg,
        claims: asyncio.Future[dict[uuid.UUID, attempts.Claim]] | None = None,
        message: TaskMessage | None = None,
    ) -> None:
        """Process one delivery end to end; always settles the message.

        ``claims`` is the batch claim this delivery took part in (see :meth:`_start`);
        without it the delivery claims alone. ``message`` is ``msg`` already decoded.
        """
        if message is None:
            try:
                message = TaskMessage.decode(msg.data)
            except MalformedMessage as exc:
                await self.dead_letter_malformed(msg, exc.reason)
                return
        with bound(task_id=str(message.task_id)):
            try:
                outcome = await self._claim_and_run(message, msg, claims)
            except OUTAGE as exc:
                # Postgres away: usually the claim did not commit and no attempt was
                # used; if it did commit unseen, the redelivery adopts it (see below).
                self._remember_uncertain(message)
                log.warning("claim_unavailable", error=repr(exc))
                await _settle(msg.nak(delay=self._redelivery_delay(msg)))
                return
            except Exception as exc:
                # Anything else (a value Postgres refuses, a bug) must not leak the
                # delivery: unsettled messages count against max_ack_pending until their
                # ack wait ends and can stall the consumer. An attempt left open ends
                # through its lease.
                log.error("handle_failed", error=f"{exc.__class__.__name__}: {exc}")
                await _settle(msg.nak(delay=self._redelivery_delay(msg)))
                return
            if outcome == "settled":
                return
            await _settle(msg.ack_sync(timeout=5))

    def _redelivery_delay(self, msg: Msg) -> float:
        delivered = msg.metadata.num_delivered or 1
        return float(min(30, 2 ** min(delivered - 1, 5)))

    def _remember_uncertain(self, message: TaskMessage) -> None:
        self.uncertain_claims.pop(message.task_id, None)
        self.uncertain_claims[message.task_id] = message.dispatch
        while len(self.uncertain_claims) > 10_000:  # bounded; oldest first
            del self.uncertain_claims[next(iter(self.uncertain_claims))]

    async def _adopt(
        self, conn: asyncpg.Connection, message: TaskMessage, refusal: attempts.Refusal
    ) -> attempts.Claim | None:
        """Take back our own attempt whose claim committed while we saw an error."""
        if (
            refusal.verdict not in ("owned_elsewhere", "lease_expired")
            or refusal.worker_id != self.settings.worker_id
            or self.uncertain_claims.get(message.task_id) != message.dispatch
            or message.task_id in self.by_task
        ):
            return None
        claim = await attempts.adopt(
            conn,
            message.task_id,
            refusal.attempt,
            message.dispatch,
            self.settings.worker_id,
            self.lease_s,
        )
        if claim is not None:
            log.warning("claim_adopted", attempt=claim.attempt, dispatch=message.dispatch)
        return claim

    async def _claim_and_run(
        self,
        message: TaskMessage,
        msg: Msg,
        claims: asyncio.Future[dict[uuid.UUID, attempts.Claim]] | None,
    ) -> str:
        if claims is not None:
            # shield: this task's cancellation must not cancel the claim the others share.
            claimed = (await asyncio.shield(claims)).get(message.task_id)
            if claimed is not None:
                self.uncertain_claims.pop(message.task_id, None)
                return await self.run_attempt(claimed, msg)
        async with self.db.acquire() as conn:
            claim: attempts.Claim | attempts.Refusal
            if claims is not None:  # the batch claim refused it: ask why (the rare path)
                claim = await attempts.diagnose(conn, message.task_id)
            else:
                claim = await attempts.claim(
                    conn, message.task_id, message.dispatch, self.settings.worker_id, self.lease_s
                )
            if isinstance(claim, attempts.Refusal):
                claim = await self._adopt(conn, message, claim) or claim
            self.uncertain_claims.pop(message.task_id, None)
            if isinstance(claim, attempts.Refusal):
                if claim.verdict == "unknown_task":
                    await self.dead_letter_malformed(msg, f"unknown task id {message.task_id}")
                    return "settled"
                if claim.verdict == "lease_expired":
                    await self._take_over(conn, message.task_id, claim)
                log.debug("delivery_skipped", verdict=claim.verdict, dispatch=message.dispatch)
                return "ack"
        return await self.run_attempt(claim, msg)

    async def _take_over(
        self, conn: asyncpg.Connection, task_id: uuid.UUID, refusal: attempts.Refusal
    ) -> None:
        s = self.settings
        outcome = await attempts.abandon(
            conn,
            task_id,
            refusal.attempt,
            reason="worker lost: lease expired before the attempt ended (redelivered)",
            backoff_s=backoff_delay(
                refusal.failed_attempts + 1, s.worker_backoff_base, s.worker_backoff_max
            ),
        )
        if outcome is not None:
            log.warning("attempt_abandoned", attempt=refusal.attempt, task_status=outcome.status)

    async def run_attempt(self, claim: attempts.Claim, msg: Msg) -> str:
        """Run the handler for ``claim``, record the outcome; return ``ack`` or ``settled``."""
        running = Running(claim, msg)
        self.running[claim.execution_id] = running
        self.by_task[claim.task_id] = running
        parent = tracing.extract(msg.headers)
        try:
            with (
                bound(attempt=claim.attempt, type=claim.type),
                self.tracer.start_as_current_span(
                    "task attempt",
                    context=parent,
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "taskflow.task_id": str(claim.task_id),
                        "taskflow.type": claim.type,
                        "taskflow.attempt": claim.attempt,
                    },
                ) as span,
            ):
                log.debug("attempt_started", priority=claim.priority)
                self.metrics.attempt_started(claim.type, claim.priority, claim.queue_wait_s)
                outcome = await self._execute(running)
                self.metrics.attempt_finished(
                    claim.type, outcome.kind, time.monotonic() - running.started
                )
                span.set_attribute("taskflow.outcome", outcome.kind)
                if outcome.kind == "failed":
                    span.set_status(trace.StatusCode.ERROR, outcome.error[:200])
                return await self._record(running, outcome)
        finally:
            self.running.pop(claim.execution_id, None)
            if self.by_task.get(claim.task_id) is running:
                del self.by_task[claim.task_id]

    async def _execute(self, running: Running) -> Outcome:
        claim = running.claim
        fn = lookup(claim.type)
        if fn is None:
            return Outcome(
                "failed",
                error=f"no handler registered for task type {claim.type!r} "
                f"(WORKER_HANDLERS={self.settings.handlers})",
                error_type="UnknownTaskType",
                permanent=True,
            )
        timeout = claim.timeout_s or self.settings.task_timeout
        ctx = TaskContext(
            task_id=claim.task_id,
            type=claim.type,
            attempt=claim.attempt,
            priority=claim.priority,
            deadline=time.time() + timeout,
            log=_handler_log(claim.type),
        )
        if self.grace_over:
            # Claimed after the shutdown grace ran out (the claim was still on its way
            # to Postgres): give the attempt back without running it.
            return Outcome("interrupted", error="worker shutting down")
        running.task = asyncio.ensure_future(fn(ctx, claim.payload))
        done, _ = await asyncio.wait({running.task}, timeout=timeout)
        if not done:
            running.task.cancel()
            with contextlib.suppress(BaseException):
                await running.task
            if running.stop_reason is None:
                return Outcome(
                    "failed", error=f"timed out after {timeout:g}s", error_type="TimeoutError"
                )
        if running.task.cancelled() or running.stop_reason is not None:
            reason = running.stop_reason or "shutdown"
            if reason == "shutdown":
                return Outcome("interrupted", error="worker shutting down")
            if reason == "cancelled":
                return Outcome("cancelled", error="cancelled by request")
            return Outcome("lost", error="lease lost to another worker")
        exc = running.task.exception()
        if exc is not None:
            return Outcome(
                "failed",
                error=f"{exc.__class__.__name__}: {exc}"[:4000],
                error_type=exc.__class__.__name__,
                permanent=isinstance(exc, PermanentError),
            )
        try:
            result_json = orjson.dumps(running.task.result()).decode()
        except TypeError as err:
            return Outcome(
                "failed",
                error=f"result is not JSON-serialisable: {err}",
                error_type="UnserializableResult",
                permanent=True,
            )
        return Outcome("succeeded", result_json=result_json)

    async def _record(self, running: Running, outcome: Outcome) -> str:
        """Write the outcome, retrying through short Postgres outages; settle the message."""
        claim, msg = running.claim, running.msg
        if outcome.kind == "lost":
            log.warning("attempt_lost", reason=outcome.error)
            return "ack"
        delay = 0.1
        deadline = time.monotonic() + max(60.0, self.settings.worker_ack_wait * 4)
        while True:
            try:
                if outcome.kind == "succeeded":
                    try:
                        # Recorded with the other successes of the moment, acked after
                        # that commit by the writer.
                        ok = await self.completions.succeed(
                            claim.task_id, claim.attempt, outcome.result_json, msg
                        )
                    except UnstorableResult as e:
                        outcome = Outcome(
                            "failed",
                            error=f"result cannot be stored: {e}",
                            error_type="UnstorableResult",
                            permanent=True,
                        )
                        continue
                    if ok:
                        self.metrics.task_completed(claim.type, claim.priority)
                        log.debug("attempt_succeeded")
                    else:
                        log.warning("attempt_fenced", outcome="succeeded")
                    return "settled"
                async with self.db.acquire() as conn:
                    if outcome.kind == "interrupted":
                        await attempts.interrupt(conn, claim.task_id, claim.attempt, outcome.error)
                        log.info("attempt_interrupted")
                        await _settle(msg.nak())
                        return "settled"
                    if outcome.kind == "cancelled":
                        await attempts.mark_cancelled(
                            conn, claim.task_id, claim.attempt, outcome.error
                        )
                        log.info("attempt_cancelled")
                        return "ack"
                    s = self.settings
                    failure = await attempts.fail(
                        conn,
                        claim.task_id,
                        claim.attempt,
                        error=outcome.error,
                        error_type=outcome.error_type,
                        permanent=outcome.permanent,
                        backoff_s=backoff_delay(
                            claim.failed_attempts + 1, s.worker_backoff_base, s.worker_backoff_max
                        ),
                    )
                    if failure is not None:
                        self.metrics.attempt_failed(claim.type, claim.priority, failure.status)
                    log.warning(
                        "attempt_failed",
                        error=outcome.error,
                        error_type=outcome.error_type,
                        permanent=outcome.permanent,
                        task_status=failure.status if failure else "fenced",
                        retry_at=(
                            str(failure.run_at)
                            if failure and failure.status == "retrying"
                            else None
                        ),
                    )
                    return "ack"
            except OUTAGE as exc:
                if time.monotonic() > deadline:
                    # Give up; the lease expires and the attempt is abandoned by the reaper.
                    log.error("record_failed", error=repr(exc))
                    await _settle(msg.nak(delay=self._redelivery_delay(msg)))
                    return "settled"
                log.warning("record_unavailable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)  # back off before retrying the write
                delay = min(delay * 2, 2.0)

    async def dead_letter_malformed(self, msg: Msg, reason: str) -> None:
        """Publish a dead letter for an undecodable delivery, then ``term`` it.

        If the dead letter cannot be published the delivery is nak'd instead, so the
        message is never dropped unrecorded.
        """
        meta = msg.metadata
        letter = DeadLetter(
            reason=f"malformed message: {reason}", subject=msg.subject, raw=msg.data[:MAX_RAW_BYTES]
        )
        msg_id = f"dlq:malformed:{meta.stream}:{meta.sequence.stream}"
        try:
            await self.bus.publish(
                self.bus.names.dlq_subject, letter.encode(), {HEADER_MSG_ID: msg_id}
            )
        except UnavailableError as exc:
            log.warning("dead_letter_unavailable", error=str(exc))
            await _settle(msg.nak(delay=self._redelivery_delay(msg)))
            return
        log.warning(
            "message_dead_lettered",
            reason=reason,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
        )
        await _settle(msg.term())

    # -- heartbeat ------------------------------------------------------------------------

    async def heartbeat_loop(self, stop: asyncio.Event, done: asyncio.Event) -> None:
        """Every ``ack_wait / 3``: ``in_progress()`` each running message, renew leases.

        The two beats run independently: a lease renewal that hangs (Postgres frozen or
        restarting; a statement may wait ``DB_STATEMENT_TIMEOUT``) must not hold back the
        ``in_progress()`` that stops NATS from redelivering a live attempt elsewhere.
        """
        await asyncio.gather(self._progress_beat(done), self._lease_beat(done))

    async def _progress_beat(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await wait_any(done, None, self.heartbeat_s)
            for r in list(self.running.values()):
                with contextlib.suppress(*NATS_ERRORS, Exception):
                    await r.msg.in_progress()

    async def _lease_beat(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await wait_any(done, None, self.heartbeat_s)
            running = list(self.running.values())
            if not running:
                continue
            try:
                async with self.db.acquire() as conn:
                    alive = await attempts.renew_leases(
                        conn, [r.claim.execution_id for r in running], self.lease_s
                    )
            except OUTAGE as exc:
                log.warning("lease_renew_unavailable", error=repr(exc))
                continue
            except Exception as exc:
                # Any other error (a deadlock with a completion batch, a bug) must not end
                # the beat: every running attempt would then lose its lease and be taken
                # over while alive. Try again on the next beat.
                log.error("lease_renew_failed", error=f"{exc.__class__.__name__}: {exc}")
                continue
            for r in running:
                if r.claim.execution_id not in alive and r.task is not None:
                    r.stop("lease_lost")

    # -- shutdown -------------------------------------------------------------------------

    async def drain(self) -> None:
        """Let in-flight work finish within the grace period, interrupt the rest, settle all.

        In flight means every delivery being handled, including one whose claim is still
        on its way to Postgres: a handler it opens after SIGTERM is bound by the same
        grace, and none starts once the grace is over.
        """
        grace = self.settings.shutdown_grace
        self.completions.confirm_acks = True
        log.info(
            "worker_draining", running=len(self.running), handling=len(self.handling), grace_s=grace
        )
        if self.handling:
            await asyncio.wait(set(self.handling), timeout=grace)
        self.grace_over = True
        for r in list(self.running.values()):
            r.stop("shutdown")
        if self.handling:
            await asyncio.wait(set(self.handling))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and run until ``stop``; then drain and return."""
        done = asyncio.Event()
        heartbeat = asyncio.create_task(self.heartbeat_loop(stop, done))
        try:
            await self.fetch_loop(stop)
            await self.drain()
        finally:
            done.set()
            await heartbeat
            for p in self.pullers.values():
                await p.close()


@functools.lru_cache(maxsize=256)
def _handler_log(task_type: str) -> EventLogger:
    """The logger handed to ``task_type``'s handlers (built once per type, not per task)."""
    return get_logger(f"taskflow.handler.{task_type}")


async def _settle(ack: Any) -> None:
    """Await an ack/nak/term; a failure here only means a later redelivery."""
    try:
        await ack
    except Exception as exc:  # every NATS error is an Exception too
        log.warning("settle_failed", error=repr(exc))


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Service body for :func:`taskflow_common.lifecycle.run_service`."""
    try:
        types = load_modules(settings.handler_modules)
    except ImportError as exc:
        raise ConfigError([f"WORKER_HANDLERS={settings.handlers!r}: cannot import: {exc}"]) from exc
    pool_size = min(settings.concurrency + 2, max(settings.db_pool_max, 4))
    try:
        async with (
            open_pool(settings, min_size=1, max_size=pool_size) as db,
            connect(settings, f"taskflow-worker {settings.worker_id}", stop=stop) as bus,
        ):
            registry = new_registry()
            worker = Worker(settings, db, bus, registry)
            with serve_metrics(
                registry, settings.metrics_host, settings.metrics_port, "WORKER_METRICS_PORT"
            ) as metrics_server:
                await worker.open(stop)
                ready(
                    worker_id=settings.worker_id,
                    handlers=types,
                    concurrency=settings.concurrency,
                    metrics_port=metrics_server.port,
                )
                await worker.run(stop)
    except UnavailableError:
        if not stop.is_set():
            raise
