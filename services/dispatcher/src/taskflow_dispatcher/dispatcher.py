"""The dispatcher: the only path from Postgres to JetStream, and the wiring of its duties.

Seven background duties share one pool and one NATS connection, each a module of its own
with the same contract (:class:`Duty`: ``run(stop)`` until the stop event is set, never
raising for an exception of one pass: each loop runs under
:func:`taskflow_common.loops.run_loop`, which logs ``loop_failed``, counts
``taskflow_loop_errors_total{loop, error}`` and backs off):

- :class:`~taskflow_dispatcher.sweeper.OutboxSweeper`: publishes due tasks (and pending
  dead letters) in batches, woken by ``LISTEN taskflow_outbox``;
- :class:`~taskflow_dispatcher.reaper.Reaper`: abandons attempts whose lease expired and
  re-queues unclaimed tasks whose message cannot be checked, after too long;
- :class:`~taskflow_dispatcher.stream_watch.StreamWatch`: recreates vanished streams,
  notices a stream created again (its identity is kept in Postgres) and re-queues what
  it held, and runs the :class:`~taskflow_dispatcher.audit.MessageAudit` (re-publishes a
  waiting task whose message the stream no longer holds);
- :class:`~taskflow_dispatcher.sampler.Sampler`: samples the lag and consumer gauges;
- :class:`~taskflow_dispatcher.schedules.ScheduleTicker`: turns due schedule ticks into
  tasks, exactly once across dispatchers, woken by ``LISTEN taskflow_schedules``;
- :class:`~taskflow_dispatcher.pruner.Pruner`: deletes terminal tasks and resolved dead
  letters past their retention, in small batches;
- :class:`~taskflow_dispatcher.dead_letter_check.DeadLetterCheck`: publishes again the
  dead letters the dead-letter stream lost before the dlq-monitor recorded them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from prometheus_client import CollectorRegistry

from taskflow_common.bus import Bus, connect
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import UnavailableError
from taskflow_common.lifecycle import ready
from taskflow_common.metrics import new_registry
from taskflow_common.metrics import serve as serve_metrics
from taskflow_dispatcher.dead_letter_check import DeadLetterCheck
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics
from taskflow_dispatcher.metrics import DispatcherMetrics
from taskflow_dispatcher.pruner import Pruner, RetentionPolicy
from taskflow_dispatcher.reaper import Reaper
from taskflow_dispatcher.sampler import Sampler
from taskflow_dispatcher.schedules import ScheduleTicker
from taskflow_dispatcher.settings import DispatcherSettings
from taskflow_dispatcher.stream_watch import StreamWatch
from taskflow_dispatcher.sweeper import OutboxSweeper


class Duty(Protocol):
    """One background duty of the dispatcher (River's maintenance-service contract)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Do the duty until ``stop`` is set; survive (log, count, back off) any error."""


class Dispatcher:
    """The dispatcher's duties over one pool and one NATS connection."""

    def __init__(
        self,
        settings: DispatcherSettings,
        db: Database,
        bus: Bus,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = DispatcherMetrics(registry or new_registry())
        maintenance = MaintenanceMetrics(self.metrics.registry)
        errors = self.metrics.loop_errors
        self.sweeper = OutboxSweeper(settings, db, bus, self.metrics, errors)
        self.reaper = Reaper(settings, db, errors)
        self.stream_watch = StreamWatch(
            db,
            bus,
            settings.stream_check_interval,
            on_recreated=self.sweeper.wake.set,
            errors=errors,
            audit_interval_s=settings.audit_interval,
        )
        self.sampler = Sampler(db, bus, self.metrics, settings.metrics_interval, errors)
        self.ticker = ScheduleTicker(
            db,
            maintenance,
            default_max_attempts=settings.worker_max_attempts,
            grace_s=settings.schedule_grace,
            poll_s=settings.poll_interval,
            errors=errors,
            listen=settings,
        )
        self.pruner = Pruner(
            db,
            maintenance,
            RetentionPolicy(settings.task_retention_s(), settings.dlq_retention),
            interval_s=settings.prune_interval,
            batch=settings.prune_batch,
            errors=errors,
        )
        self.dead_letter_check = DeadLetterCheck(
            db,
            bus,
            settings.dead_letter_check_interval,
            metrics=self.metrics,
            errors=errors,
            on_rearmed=self._dead_letters_rearmed,
        )

    def _dead_letters_rearmed(self) -> None:
        self.sweeper.dead_hint = True
        self.sweeper.wake.set()

    @property
    def duties(self) -> list[Duty]:
        """Every duty :meth:`run` runs, in start order."""
        return [
            self.sweeper,
            self.reaper,
            self.stream_watch,
            self.sampler,
            self.ticker,
            self.pruner,
            self.dead_letter_check,
        ]

    async def start(self, stop: asyncio.Event) -> None:
        """Make sure the streams exist (retrying while NATS is down)."""
        await self.stream_watch.prepare(stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every duty until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            for duty in self.duties:
                group.create_task(duty.run(stop))


async def serve(settings: DispatcherSettings, stop: asyncio.Event) -> None:
    """Service body for :func:`taskflow_common.lifecycle.run_service`.

    Opens the pool (1-6 connections) and the NATS connection, serves ``/metrics`` on
    ``DISPATCHER_METRICS_HOST:PORT``, reconciles the streams, reports ready, then runs the
    duties until ``stop``. Raises UnavailableError when a dependency cannot be reached
    at start (unless stopping), MetricsPortError when the metrics port is taken.
    """
    try:
        async with (
            open_pool(settings, min_size=1, max_size=6) as db,
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
