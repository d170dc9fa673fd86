"""The heartbeat of running attempts: ``in_progress()`` to NATS, lease renewal in Postgres.

Every ``interval_s`` (``ack_wait / 3``, at least 0.2 s) two beats run, independently:
one tells NATS each running message is still in progress (so it is not redelivered
while its handler lives), the other renews the attempts' leases (so the reaper does not
abandon them). An attempt whose lease is gone (taken over, or its task cancelled) is
stopped with reason ``lease_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib

from taskflow_common.bus import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.db import Database
from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.retry import OUTAGE
from taskflow_common.store import attempts
from taskflow_worker.attempt import RunningAttempts

log = get_logger(__name__)


class Heartbeat:
    """Keeps ``running``'s attempts alive: ``in_progress()`` and leases of ``lease_s`` seconds."""

    def __init__(
        self, db: Database, running: RunningAttempts, lease_s: float, interval_s: float
    ) -> None:
        self.db = db
        self.running = running
        self.lease_s = lease_s
        self.interval_s = interval_s

    async def run(self, done: asyncio.Event) -> None:
        """Beat every ``interval_s`` seconds until ``done`` is set.

        The two beats run independently: a lease renewal that hangs (Postgres frozen or
        restarting; a statement may wait ``DB_STATEMENT_TIMEOUT``) must not hold back the
        ``in_progress()`` that stops NATS from redelivering a live attempt elsewhere.
        """
        await asyncio.gather(self._progress_beat(done), self._lease_beat(done))

    async def _progress_beat(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await wait_any(done, None, self.interval_s)
            for r in self.running.snapshot():
                with contextlib.suppress(*NATS_ERRORS, Exception):
                    await r.msg.in_progress()

    async def _lease_beat(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await wait_any(done, None, self.interval_s)
            running = self.running.snapshot()
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
