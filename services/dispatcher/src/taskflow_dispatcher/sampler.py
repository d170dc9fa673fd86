"""Sample the gauges that need a query: dispatcher lag and the task consumers' state.

Every ``DISPATCHER_METRICS_INTERVAL`` (default 5 s) the dispatcher reads, off the task
path:

- the age of the oldest due-but-unpublished task (``taskflow_dispatcher_lag_seconds``,
  one index lookup on ``tasks_dispatch_due``);
- ``consumer_info`` of each priority's durable consumer: ``num_pending`` (not yet
  delivered), ``num_ack_pending`` (delivered, not acked), ``num_redelivered`` and the
  configured ``max_ack_pending`` (``taskflow_consumer_*{priority}``).

With several dispatchers running, each reports the same values; dashboards take ``max``.
A round that fails (Postgres or NATS away) keeps the previous values and counts
``taskflow_dispatcher_samples_total{result="error"}``; the lag then goes stale rather
than to zero, and the alert on it keeps firing while Postgres is away.
"""

from __future__ import annotations

import asyncio

import nats.js.errors

from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import OUTAGE
from taskflow_common.store import outbox
from taskflow_common.subjects import PRIORITIES
from taskflow_dispatcher.metrics import DispatcherMetrics

log = get_logger(__name__)


class Sampler:
    """Refresh the sampled gauges of ``metrics`` every ``interval_s`` seconds."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        metrics: DispatcherMetrics,
        interval_s: float,
        errors: LoopErrors | None = None,
    ) -> None:
        self.errors = errors
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self.interval_s = interval_s
        self._failing = False

    async def sample_once(self) -> None:
        """Read the lag and the three consumers once; raise on Postgres/NATS faults."""
        async with self.db.acquire() as conn:
            lag = await outbox.dispatch_lag(conn)
        self.metrics.lag.set(lag)
        names = self.bus.names
        for priority in PRIORITIES:
            try:
                info = await self.bus.js.consumer_info(names.stream, names.consumer(priority))
            except nats.js.errors.NotFoundError:
                continue  # the workers create the consumers; none has started yet
            self.metrics.consumer_state(
                priority,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                max_ack_pending=info.config.max_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop``; a failed round is counted (``result="error"``) and retried.

        An outage is logged once (``metrics_sample_failed``) and retried every interval;
        any other error goes to :func:`~taskflow_common.loops.run_loop` (``loop="sampler"``).
        """
        await run_loop("sampler", self._round, stop, errors=self.errors)

    async def _round(self) -> float:
        try:
            await self.sample_once()
        except OUTAGE as exc:
            self.metrics.samples.labels("error").inc()
            if not self._failing:
                log.warning("metrics_sample_failed", error=repr(exc))
            self._failing = True
        except Exception:
            self.metrics.samples.labels("error").inc()
            raise
        else:
            self.metrics.samples.labels("ok").inc()
            self._failing = False
        return self.interval_s
