"""The reaper: end attempts whose worker is gone, re-queue tasks nobody claimed.

Every ``DISPATCHER_REAP_INTERVAL`` it ends attempts whose lease expired (worker gone) as
``abandoned`` and schedules their retry with the task's backoff, closes orphaned
executions, and re-queues tasks published but unclaimed for
``DISPATCHER_REDISPATCH_AFTER`` whose message cannot be checked against the stream (no
stream sequence recorded; the others are the
:class:`~taskflow_dispatcher.audit.MessageAudit`'s). Leases are only believed once
Postgres has answered promptly for a whole lease period (:class:`LeaseTrust`), so an
outage is never booked as lost workers.
"""

from __future__ import annotations

import asyncio

from taskflow_common.backoff import backoff_delay
from taskflow_common.db import Database
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import OUTAGE
from taskflow_common.store import attempts, outbox
from taskflow_dispatcher.settings import DispatcherSettings

log = get_logger(__name__)

EXPIRED_BATCH = 200
"""Expired leases handled per round at most."""


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


class Reaper:
    """Runs :meth:`reap_once` every ``DISPATCHER_REAP_INTERVAL`` until stopped.

    The lease period is ``WORKER_ACK_WAIT``; a probe that takes longer than a sixth of it
    (at least 0.5 s) counts as a stall (see :class:`LeaseTrust`).
    """

    def __init__(
        self, settings: DispatcherSettings, db: Database, errors: LoopErrors | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.errors = errors
        self.lease_trust = LeaseTrust(
            settings.worker_ack_wait, stall_s=max(0.5, settings.worker_ack_wait / 6)
        )

    async def reap_once(self) -> int:
        """Abandon attempts whose lease expired; return how many.

        Nothing is abandoned while :attr:`lease_trust` says the leases cannot be
        believed yet (Postgres was just away, or this probe hung). Raises
        UnavailableError (or a driver error) when Postgres is away.
        """
        s = self.settings
        count = 0
        loop = asyncio.get_running_loop()
        async with self.db.acquire() as conn:
            started = loop.time()
            try:
                expired = await outbox.expired_leases(conn, EXPIRED_BATCH)
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

    async def run(self, stop: asyncio.Event) -> None:
        """Run :meth:`reap_once` every ``DISPATCHER_REAP_INTERVAL`` until ``stop``.

        Never raises for an exception of one round (:func:`~taskflow_common.loops.run_loop`,
        ``loop="reaper"``); after an outage the leases are distrusted until Postgres has
        answered for a lease period again.
        """
        await run_loop("reaper", self._round, stop, errors=self.errors)

    async def _round(self) -> float:
        try:
            await self.reap_once()
        except OUTAGE:
            self.lease_trust.failed()
            raise
        return self.settings.reap_interval
