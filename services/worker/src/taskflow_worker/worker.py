"""The worker: fetch by priority, claim, run the handler, record the attempt, settle.

Delivery is at-least-once; Postgres makes execution at-most-once-at-a-time:

1. Fetch at most as many messages as there are free slots (``WORKER_CONCURRENCY``),
   so no message waits in a local buffer while its ack wait runs out; skip priorities
   known to be empty (see :mod:`taskflow_worker.fetcher`).
2. Claim every task of the fetch with one fenced statement that also opens the
   execution rows and their leases (one round trip per fetch). A delivery that did not
   claim is settled without running anything (see :mod:`taskflow_worker.claims`).
3. While the handler runs, a heartbeat every ``ack_wait / 3`` sends ``in_progress()``
   and renews the leases, so a long task is never redelivered while it is alive
   (:mod:`taskflow_worker.heartbeat`).
4. Record the outcome (retrying while Postgres is briefly away), then ack
   (:mod:`taskflow_worker.attempt`). Successes are recorded in batches, one statement
   for the attempts that finished together, and acked after that commit with one flush
   per batch (:mod:`taskflow_worker.completions`); failures, interrupts and cancels are
   recorded one by one and acked with the server's confirmation. Every path settles its
   message (ack, nak or term).

SIGTERM: stop fetching; give handlers ``WORKER_SHUTDOWN_GRACE``; cancel the rest,
record them as ``interrupted`` (not counted) and nak them for prompt redelivery. Every
ack sent while draining is confirmed by the server.

This module wires those parts together (:class:`Worker`) and is the service body
(:func:`serve`).
"""

from __future__ import annotations

import asyncio
import os
import sys

from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from taskflow_common.bus import Bus, ConsumerGone, ConsumerSettings, Puller, connect
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import ConfigError, MalformedMessage, UnavailableError
from taskflow_common.lifecycle import ready, wait_any
from taskflow_common.logs import get_logger
from taskflow_common.loops import run_loop
from taskflow_common.messages import CancelRequest
from taskflow_common.metrics import new_registry
from taskflow_common.metrics import serve as serve_metrics
from taskflow_common.retry import Backoff
from taskflow_common.subjects import PRIORITIES, Priority
from taskflow_worker.attempt import AttemptRunner
from taskflow_worker.claims import Claims
from taskflow_worker.completions import Completions
from taskflow_worker.delivery import DeadLetters
from taskflow_worker.fetcher import Fetcher
from taskflow_worker.handlers import load_modules
from taskflow_worker.heartbeat import Heartbeat
from taskflow_worker.metrics import WorkerMetrics
from taskflow_worker.running import RunningAttempts
from taskflow_worker.settings import WorkerSettings

log = get_logger(__name__)


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
        self.bus = bus
        self.metrics = WorkerMetrics(
            registry or new_registry(), settings.concurrency, lambda: self.claims.inflight
        )
        # Attempts that may still report a success: running, or waiting to be recorded.
        self.running = RunningAttempts()
        self.completions = Completions(db, bus, lambda: len(self.running))
        self.runner = AttemptRunner(settings, db, self.metrics, self.completions, self.running)
        self.claims = Claims(settings, db, self.runner, self.running, DeadLetters(bus))
        self.heartbeat = Heartbeat(
            db,
            self.running,
            lease_s=settings.worker_ack_wait,
            interval_s=max(0.2, settings.worker_ack_wait / 3),
            errors=self.metrics.loop_errors,
            settle=self.claims.settle_uncertain,
        )
        self.doorbell = asyncio.Event()
        self.fetcher: Fetcher | None = None
        self.pullers: dict[Priority, Puller] = {}

    # -- set-up ---------------------------------------------------------------------------

    async def reconcile(self, stop: asyncio.Event) -> None:
        """Create or update the streams and the three consumers (retrying while NATS is down).

        Raises ConsumerConfigMismatch when a consumer cannot be brought to the config.
        """
        backoff = Backoff()
        while not stop.is_set():
            try:
                await self.bus.ensure_streams()
                await self.bus.ensure_task_consumers(ConsumerSettings.from_settings(self.settings))
                return
            except UnavailableError as exc:
                delay = backoff.failed()
                log.warning("jetstream_unavailable", error=str(exc), retry_in_s=delay)
                await wait_any(stop, None, delay)

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
            running = self.running.of_task(request.task_id)
            if running is None:
                return
            if request.attempt is not None and request.attempt != running.claim.attempt:
                # A late request for an earlier attempt (cancel -> retry -> new claim).
                log.info("cancel_ignored", task_id=str(request.task_id), attempt=request.attempt)
                return
            running.stop("cancelled")

        await self.bus.nc.subscribe(names.wake_subject, cb=on_wake)
        await self.bus.nc.subscribe(names.cancel_subject, cb=on_cancel)

    # -- fetching -------------------------------------------------------------------------

    async def fetch_loop(self, stop: asyncio.Event) -> None:
        """Fetch into free slots until ``stop``; spawn one handling task per message.

        A pass that raises (an outage, or anything else: a consumer that cannot be
        reconciled, a bug) is logged, counted and backed off by
        :func:`~taskflow_common.loops.run_loop`; the loop goes on.
        """

        async def once() -> None:
            await self._fetch_once(stop)

        await run_loop("fetch", once, stop, errors=self.metrics.loop_errors)

    async def _fetch_once(self, stop: asyncio.Event) -> None:
        assert self.fetcher is not None
        claims = self.claims
        free = self.settings.concurrency - claims.inflight
        if free <= 0:
            claims.slot_free.clear()
            await wait_any(stop, claims.slot_free, 1.0)
            return
        self.doorbell.clear()
        try:
            batch = await self.fetcher.fetch(free)
        except ConsumerGone as exc:
            log.warning("consumer_gone", error=str(exc))
            await self.reconcile(stop)
            return
        self.metrics.fetch_round([p for p, _ in batch])
        if not batch:
            await wait_any(stop, self.doorbell, self.settings.poll_timeout)
            return
        claims.start(batch)

    # -- shutdown -------------------------------------------------------------------------

    async def drain(self) -> None:
        """Let in-flight work finish within the grace period, interrupt the rest, settle all.

        In flight means every delivery being handled, including one whose claim is still
        on its way to Postgres: a handler it opens after SIGTERM is bound by the same
        grace, and none starts once the grace is over.
        """
        grace = self.settings.shutdown_grace
        handling = self.claims.handling
        self.completions.confirm_acks = True
        log.info(
            "worker_draining", running=len(self.running), handling=len(handling), grace_s=grace
        )
        if handling:
            await asyncio.wait(set(handling), timeout=grace)
        self.runner.grace_over = True
        for r in self.running.snapshot():
            r.stop("shutdown")
        if handling:
            await asyncio.wait(set(handling))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and run until ``stop``; then drain and return."""
        done = asyncio.Event()
        heartbeat = asyncio.create_task(self.heartbeat.run(done))
        try:
            await self.fetch_loop(stop)
            await self.drain()
        finally:
            done.set()
            await heartbeat
            for p in self.pullers.values():
                await p.close()


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Service body for :func:`taskflow_common.lifecycle.run_service`.

    Raises :class:`ConfigError` when ``WORKER_HANDLERS`` cannot be imported,
    ``MetricsPortError`` when the metrics port cannot be bound, and
    :class:`UnavailableError` when Postgres or NATS is away at start (unless stopping).
    """
    try:
        types = load_modules(settings.handler_modules)
    except ImportError as exc:
        raise ConfigError([f"WORKER_HANDLERS={settings.handlers!r}: cannot import: {exc}"]) from exc
    pool_size = min(settings.concurrency + 2, max(settings.db_pool_max, 4))
    worker: Worker | None = None
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
    finally:
        if worker is not None and worker.runner.stuck:
            failing = sys.exc_info()[1] is not None
            _exit_past_stuck_handlers(len(worker.runner.stuck), 1 if failing else 0)


def _exit_past_stuck_handlers(count: int, code: int) -> None:
    """End the process with ``code`` although handlers that ignore cancellation still run.

    The event loop's shutdown cancels every remaining task and waits for each: a
    handler that swallows ``CancelledError`` would hold the exit for ever. Their
    attempts are recorded already and the connections closed, so exit now (skipping
    the interpreter's own shutdown, and the last ``service_stopped`` line).
    """
    log.error("exiting_with_stuck_handlers", count=count, exit_code=code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
