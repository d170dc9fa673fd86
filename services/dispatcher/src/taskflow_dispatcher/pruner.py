"""The pruner: retention of terminal tasks and resolved dead letters, in small batches.

Every ``interval_s`` the pruner deletes, per terminal status, the tasks finished longer
ago than that status's retention, and the dead letters resolved longer ago than the
dead-letter retention (:mod:`taskflow_common.store.retention` says what is always kept).
Each batch of at most ``batch`` rows is one statement on a pooled connection, so its row
locks last milliseconds and the hot path (submits, claims, completions) never waits on
a long transaction; between batches the pruner yields for :data:`PAUSE_S`, and a pass
stops after :data:`MAX_BATCHES_PER_PASS` batches so a first prune of a huge backlog is
spread over passes. Several dispatchers may prune at once: ``SKIP LOCKED`` keeps them on
different rows.

A retention of 0 keeps that kind of row forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskflow_common.db import Database
from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.store import retention
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics

log = get_logger(__name__)

PAUSE_S = 0.01
"""Pause between two batches of one pass (seconds): other transactions get the rows' pages."""
MAX_BATCHES_PER_PASS = 200
"""Batches one pass runs at most (100,000 rows at the default batch of 500)."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long rows are kept, seconds (0 = forever).

    ``tasks_s``: per terminal status (``completed``, ``failed``, ``cancelled``);
    ``dead_letters_s``: replayed or discarded dead letters, counted from their resolution.
    """

    tasks_s: Mapping[str, float] = field(
        default_factory=lambda: dict.fromkeys(retention.PRUNABLE_STATUSES, 14 * 86400.0)
    )
    dead_letters_s: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class PrunePass:
    """Rows one pass deleted, and whether it stopped with more left (``more``)."""

    tasks: int = 0
    executions: int = 0
    dead_letters: int = 0
    more: bool = False


class Pruner:
    """Runs retention passes every ``interval_s`` (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        metrics: MaintenanceMetrics,
        policy: RetentionPolicy,
        *,
        interval_s: float = 60.0,
        batch: int = 500,
        errors: LoopErrors | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.policy = policy
        self.interval_s = interval_s
        self.batch = batch
        self.errors = errors
        self.stop: asyncio.Event | None = None

    async def prune_once(self, *, max_batches: int = MAX_BATCHES_PER_PASS) -> PrunePass:
        """Run one pass: batches until each kind of row is done or ``max_batches`` ran.

        Returns the counts. Raises what the database raises (a batch that failed
        deleted nothing; the ones before it stay deleted).
        """
        tasks = executions = dead = batches = 0
        more = False
        for status in retention.PRUNABLE_STATUSES:
            keep_s = self.policy.tasks_s.get(status, 0.0)
            while keep_s > 0 and not self._stopping():
                if batches >= max_batches:
                    more = True
                    break
                started = time.perf_counter()
                async with self.db.acquire() as conn:
                    done = await retention.prune_tasks(conn, status, keep_s, self.batch)
                self.metrics.prune_seconds.observe(time.perf_counter() - started)
                batches += 1
                tasks += done.tasks
                executions += done.executions
                self.metrics.pruned.labels("tasks").inc(done.tasks)
                self.metrics.pruned.labels("task_executions").inc(done.executions)
                if done.tasks < self.batch:
                    break
                await asyncio.sleep(PAUSE_S)
        while self.policy.dead_letters_s > 0 and not self._stopping():
            if batches >= max_batches:
                more = True
                break
            started = time.perf_counter()
            async with self.db.acquire() as conn:
                n = await retention.prune_dead_letters(conn, self.policy.dead_letters_s, self.batch)
            self.metrics.prune_seconds.observe(time.perf_counter() - started)
            batches += 1
            dead += n
            self.metrics.pruned.labels("dead_letters").inc(n)
            if n < self.batch:
                break
            await asyncio.sleep(PAUSE_S)
        async with self.db.acquire() as conn:
            ages = await retention.oldest_terminal_age(conn)
        for status, age in ages.items():
            self.metrics.oldest_terminal.labels(status).set(age or 0.0)
        if tasks or dead:
            log.info(
                "retention_pruned",
                tasks=tasks,
                executions=executions,
                dead_letters=dead,
                more=more,
            )
        return PrunePass(tasks, executions, dead, more)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def iteration(self) -> float:
        """One pass; sleep ``interval_s`` after it (a pass that stopped short: 1 s)."""
        done = await self.prune_once()
        return min(1.0, self.interval_s) if done.more else self.interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """Prune until ``stop`` (a pass in progress stops between batches)."""
        self.stop = stop
        # The first pass waits a little (at most 5 s) so that a starting dispatcher
        # publishes and reaps before it deletes anything.
        await wait_any(stop, None, min(5.0, self.interval_s))
        await run_loop("pruner", self.iteration, stop, errors=self.errors)
