"""The schedule loop: turn due schedule ticks into tasks, exactly once, with no leader.

Every dispatcher runs this loop. A pass is one transaction
(:meth:`ScheduleTicker.tick_once`): lock up to ``batch`` due schedules ``FOR UPDATE SKIP
LOCKED`` (another dispatcher's pass skips them, so each tick is decided once), let
:func:`taskflow_common.ticks.plan` decide which ticks fire under the schedule's
missed-tick and overlap policies, insert their tasks (``ON CONFLICT (schedule,
scheduled_for) DO NOTHING``) and store the next fire times; then commit. A dispatcher that
dies mid-pass rolls it all back and the ticks are still due for the next pass, on this
dispatcher or another: none is lost, none doubled.

Between passes the loop sleeps until the next tick is due by the database clock (plus
:data:`WAKE_MARGIN_S`), at most ``poll_s``, so a tick's task is created within
milliseconds of its due time. A client's change to a schedule notifies
``taskflow_schedules`` (migration 0005); the dispatcher's LISTEN connection calls
:meth:`ScheduleTicker.notified`, which ends the sleep at once. While a ``queue`` tick waits
for a running task the loop looks every :data:`HOLD_POLL_S`.

Each fired tick gets a span (``schedule tick``) whose context is stored on the task, so
the task's trace starts at its tick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from opentelemetry import trace

from taskflow_common import tracing
from taskflow_common.config import CommonSettings
from taskflow_common.db import Database
from taskflow_common.listener import Listener
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.store import schedule_ticks, schedules
from taskflow_common.ticks import plan
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics

log = get_logger(__name__)

BATCH = 100
"""Schedules one pass locks at most (a full batch makes the next pass start at once)."""
WAKE_MARGIN_S = 0.001
"""Sleep this much past a tick, so the pass that wakes finds it due."""
BUSY_WAIT_S = 0.02
"""Sleep when a due schedule is locked by another dispatcher's pass (it ends in ms)."""
HOLD_POLL_S = 0.5
"""How often to look again while a ``queue`` tick waits for its previous run to end."""


@dataclass(frozen=True, slots=True)
class TickPass:
    """One pass: schedules ``locked``, tasks ``fired``, ticks ``skipped`` (both policies),
    ``late``, ``replayed`` (their task existed) and ``more`` (start the next pass now)."""

    locked: int = 0
    fired: int = 0
    skipped: int = 0
    late: int = 0
    replayed: int = 0
    more: bool = False


class ScheduleTicker:
    """The schedule loop of one dispatcher (see the module docstring).

    ``default_max_attempts`` fills a template without ``max_attempts``
    (``WORKER_MAX_ATTEMPTS``); ``grace_s`` is the age up to which a tick is on time
    (``SCHEDULE_MISFIRE_GRACE``); ``poll_s`` the longest sleep between passes; ``tracer``
    (default: the global provider's) makes the tick spans; with ``listen`` (the settings to
    connect with) :meth:`run` also holds a ``LISTEN taskflow_schedules`` connection.
    """

    def __init__(
        self,
        db: Database,
        metrics: MaintenanceMetrics,
        *,
        default_max_attempts: int,
        grace_s: float = 5.0,
        poll_s: float = 1.0,
        batch: int = BATCH,
        errors: LoopErrors | None = None,
        tracer: trace.Tracer | None = None,
        listen: CommonSettings | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.default_max_attempts = default_max_attempts
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.batch = batch
        self.errors = errors
        self.wake = asyncio.Event()
        self.tracer = tracer or trace.get_tracer("taskflow.dispatcher")
        # LISTEN taskflow_schedules on a connection of its own (with ``listen``); every
        # (re)connect wakes a pass too, for what changed while nobody listened.
        self.listener = (
            Listener(
                listen,
                schedules.CHANNEL,
                self.notified,
                on_connect=self.wake.set,
                log_as="schedules_listen",
            )
            if listen is not None
            else None
        )

    def notified(self, *_: object) -> None:
        """Wake the loop now (an asyncpg listener callback for :data:`schedules.CHANNEL`)."""
        self.wake.set()

    async def tick_once(self, now: dt.datetime | None = None) -> TickPass:
        """Run one pass in one transaction; return what it did.

        ``now`` replaces the database clock for deciding what is due and which ticks are
        on time (tests simulate months with it). Raises what the database raises (an
        outage: ``UnavailableError``); the transaction is then rolled back whole.
        """
        async with self.db.acquire() as conn, conn.transaction():
            due = await schedule_ticks.lock_due(conn, self.batch, now=now)
            if not due:
                return TickPass()
            fire: list[schedule_ticks.Tick] = []
            moves: list[schedule_ticks.Advance] = []
            lags: dict[tuple[str, dt.datetime], float] = {}
            missed = overlap = late = 0
            more = len(due) >= self.batch
            for d in due:
                p = plan(
                    d.cadence, d.policy, d.next_fire_at, d.now, d.previous, grace_s=self.grace_s
                )
                for tick in p.fire:
                    fire.append(schedule_ticks.Tick(d.name, tick, self._trace_parent(d.name, tick)))
                    lags[(d.name, tick)] = (d.now - tick).total_seconds()
                moves.append(
                    schedule_ticks.Advance(d.name, p.next_fire_at, p.fire[-1] if p.fire else None)
                )
                missed += p.skipped_missed
                overlap += p.skipped_overlap
                late += p.late
                more = more or (not p.held and p.next_fire_at <= d.now)
                if p.skipped_missed or p.skipped_overlap:
                    log.info(
                        "schedule_ticks_skipped",
                        schedule=d.name,
                        missed=p.skipped_missed,
                        overlap=p.skipped_overlap,
                        next_fire_at=p.next_fire_at.isoformat(),
                    )
            inserted = await schedule_ticks.fire(
                conn, fire, default_max_attempts=self.default_max_attempts
            )
            await schedule_ticks.advance(conn, moves)
        made = [lags[(r["schedule"], r["scheduled_for"])] for r in inserted]
        self.metrics.ticks(fired_lags=made, late=late, replayed=len(fire) - len(inserted))
        self.metrics.skipped(missed=missed, overlap=overlap)
        if log.is_enabled(10):
            for r in inserted:
                log.debug(
                    "schedule_fired",
                    schedule=r["schedule"],
                    scheduled_for=r["scheduled_for"].isoformat(),
                    task_id=str(r["id"]),
                )
        return TickPass(
            locked=len(due),
            fired=len(inserted),
            skipped=missed + overlap,
            late=late,
            replayed=len(fire) - len(inserted),
            more=more,
        )

    def _trace_parent(self, name: str, tick: dt.datetime) -> str | None:
        span = self.tracer.start_span(
            "schedule tick",
            kind=trace.SpanKind.PRODUCER,
            attributes={"taskflow.schedule": name, "taskflow.scheduled_for": tick.isoformat()},
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                return tracing.current_traceparent()
        finally:
            span.end()

    async def iteration(self) -> float:
        """One pass, then the seconds to sleep before the next (0: go on at once)."""
        self.wake.clear()  # a change committed during the pass wakes the next one
        done = await self.tick_once()
        if done.more or self.wake.is_set():
            return 0.0
        async with self.db.acquire() as conn:
            nxt = await schedule_ticks.next_due(conn)
        wait = self.poll_s
        if nxt.in_s is not None:
            wait = min(wait, nxt.in_s + WAKE_MARGIN_S if nxt.in_s > 0 else BUSY_WAIT_S)
        if nxt.waiting:
            wait = min(wait, HOLD_POLL_S)
        return wait

    async def run(self, stop: asyncio.Event) -> None:
        """Run passes until ``stop``; any failed pass is logged, counted and retried."""
        async with asyncio.TaskGroup() as group:
            if self.listener is not None:
                group.create_task(self.listener.run(stop))
            group.create_task(
                run_loop("schedules", self.iteration, stop, errors=self.errors, wake=self.wake)
            )
