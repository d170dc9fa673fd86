"""The heartbeat of running attempts: ``in_progress()`` to NATS, lease renewal in Postgres.

Every ``interval_s`` (``ack_wait / 3``, at least 0.2 s) two beats run, independently:
one tells NATS each running message is still in progress (so it is not redelivered
while its handler lives), the other renews the attempts' leases (so the reaper does not
abandon them). An attempt whose lease is gone (taken over, or its task cancelled) is
stopped with reason ``lease_lost``. A renewal never waits for a row lock: an attempt whose
row another transaction holds (its success being recorded, say) is skipped for that beat
(:class:`~taskflow_common.store.attempts.Renewal`).

A third duty, the lease watch, stops a handler whose lease this worker has not renewed
for ``lease_s - margin`` (``margin`` = :data:`LEASE_MARGIN` x ``lease_s``) with reason
``lease_unrenewed``: when only this worker has lost Postgres, the reaper abandons the
attempt once its lease ends and another worker runs the retry, so the handler must be
gone by then or two runs overlap. Its lease counts from when the last successful
renewal was *sent* (:attr:`~taskflow_worker.attempt.Running.lease_from`), never later
than Postgres counts it; the margin leaves the handler time to unwind (the runner allows
it ``margin / 2``, at most 5 s, see
:attr:`~taskflow_worker.attempt.AttemptRunner.stuck_s`). The attempt is
then recorded ``interrupted`` ("lease not renewed; stopped", not counted) once Postgres
answers, unless the reaper got there first. A Postgres outage seen by every worker
stops their handlers the same way once it outlasts ``lease_s - margin``: a worker cannot
tell the two apart, and never running twice at once comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from taskflow_common.bus import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.db import Database
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import OUTAGE
from taskflow_common.store import attempts
from taskflow_worker.running import Running, RunningAttempts

log = get_logger(__name__)

LEASE_MARGIN = 0.25
"""Share of the lease left when an unrenewed attempt's handler is stopped (for its unwind)."""


class Heartbeat:
    """Keeps ``running``'s attempts alive: ``in_progress()`` and leases of ``lease_s`` seconds."""

    def __init__(
        self,
        db: Database,
        running: RunningAttempts,
        lease_s: float,
        interval_s: float,
        errors: LoopErrors | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.running = running
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.errors = errors
        self.settle = settle
        """Run after each lease beat: settles uncertain claims (see claims.py)."""

    async def run(self, done: asyncio.Event) -> None:
        """Beat every ``interval_s`` seconds until ``done`` is set.

        The two beats run independently: a lease renewal that hangs (Postgres frozen or
        restarting; a statement may wait ``DB_STATEMENT_TIMEOUT``) must not hold back the
        ``in_progress()`` that stops NATS from redelivering a live attempt elsewhere.
        Each is a :func:`~taskflow_common.loops.run_loop`: a beat that raises is logged,
        counted and backed off, and the next one comes.
        """
        await asyncio.gather(
            run_loop("progress_beat", self._progress_beat, done, errors=self.errors),
            run_loop("lease_beat", self._lease_beat, done, errors=self.errors),
            run_loop("lease_watch", self._lease_watch, done, errors=self.errors),
        )

    async def _progress_beat(self) -> float:
        for r in self.running.snapshot():
            with contextlib.suppress(*NATS_ERRORS, Exception):
                await r.msg.in_progress()
        return self.interval_s

    async def _lease_beat(self) -> float:
        running = self.running.snapshot()
        if running:
            await self._renew(running)
        if self.settle is not None:
            await self.settle()
        return self.interval_s

    async def _renew(self, running: list[Running]) -> None:
        sent = time.monotonic()
        try:
            async with self.db.acquire() as conn:
                renewal = await attempts.renew_leases(
                    conn, [r.claim.execution_id for r in running], self.lease_s
                )
        except OUTAGE as exc:
            log.warning("lease_renew_unavailable", error=repr(exc))
            return
        except Exception as exc:
            # Any other error (a statement timeout, a bug) must not end
            # the beat: every running attempt would then lose its lease and be taken
            # over while alive. Try again on the next beat.
            log.error("lease_renew_failed", error=f"{exc.__class__.__name__}: {exc}")
            if self.errors is not None:
                self.errors.count("lease_beat", exc)
            return
        for r in running:
            if r.claim.execution_id in renewal.renewed:
                r.lease_from = max(r.lease_from, sent)
            elif r.claim.execution_id in renewal.busy:
                # Its row was locked elsewhere (being recorded, abandoned or cancelled):
                # not renewed this beat, not lost either; the next beat tells.
                continue
            elif r.task is not None:
                r.stop("lease_lost")

    async def _lease_watch(self) -> float:
        keep = self.lease_s * (1 - LEASE_MARGIN)
        now = time.monotonic()
        next_check = now + self.interval_s
        for r in self.running.snapshot():
            due = r.lease_from + keep
            if now < due:
                next_check = min(next_check, due)
            elif r.task is not None and not r.task.done() and r.stop_reason is None:
                log.warning(
                    "lease_not_renewed",
                    task_id=str(r.claim.task_id),
                    attempt=r.claim.attempt,
                    unrenewed_s=round(now - r.lease_from, 3),
                    lease_s=self.lease_s,
                )
                r.stop("lease_unrenewed")
        # An attempt registered after this pass is due at least ``keep`` from now, later
        # than ``interval_s``: waking at next_check never misses one.
        return max(0.01, next_check - time.monotonic())
