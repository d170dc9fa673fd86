"""The stream watch: recreate vanished streams, notice a stream created again, audit.

A NATS server restarted on an empty store (or a deleted stream) loses every published
but unclaimed task message, and any service may create the stream again (workers and the
dlq-monitor reconcile the streams at start too). So the stream's identity, its creation
time, is remembered in Postgres (``bus_streams``, migration 0006) and compared at start
and every ``DISPATCHER_STREAM_CHECK_INTERVAL``, whoever created the stream: when it
changed, every published-but-unclaimed task is re-queued and the outbox sweeper woken to
publish them again (issue 11, item 6). A missing stream is created.

Every ``DISPATCHER_AUDIT_INTERVAL`` the same round also runs the
:class:`~taskflow_dispatcher.audit.MessageAudit` (after the identity check, so the audit
never compares sequences of two different streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from taskflow_common.bus import Bus
from taskflow_common.bus.streams import StreamState
from taskflow_common.db import Database
from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import OUTAGE
from taskflow_common.store import outbox, waiting
from taskflow_dispatcher.audit import MessageAudit

log = get_logger(__name__)

START_RETRY_S = 1.0
"""Seconds between two tries to reconcile the streams at start while NATS is away."""


class StreamWatch:
    """Keeps the streams present and known; ``on_recreated()`` runs after a re-queue.

    :meth:`prepare` reconciles the streams once at start; :meth:`run` watches them
    every ``interval_s`` seconds (and audits every ``audit_interval_s``) until stopped.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        interval_s: float,
        on_recreated: Callable[[], None],
        errors: LoopErrors | None = None,
        audit_interval_s: float = 5.0,
    ) -> None:
        self.errors = errors
        self.db = db
        self.bus = bus
        self.interval_s = interval_s
        self.audit_interval_s = audit_interval_s
        self.on_recreated = on_recreated
        self.audit = MessageAudit(db, bus)
        self.audited_at: float | None = None
        self.stream_created: str | None = None
        """The task stream's creation time as last seen (None before :meth:`prepare`)."""

    async def prepare(self, stop: asyncio.Event) -> None:
        """Make sure the streams exist and their identity is known, retrying every
        :data:`START_RETRY_S` while NATS (or Postgres) is away; returns early when
        ``stop`` is set.

        A stream other than the one Postgres remembers (created again while this
        dispatcher was down, by whoever) has lost every message published before: every
        published-but-unclaimed task is re-queued. So is everything when this call
        created the stream and Postgres remembered none (an older installation).
        """
        while not stop.is_set():
            try:
                created = await self.bus.ensure_streams()
                state = await self.bus.stream_state()
                if state is None:
                    continue  # deleted again meanwhile: start over
                requeued = await self._adopt(state)
                if created and requeued is None:
                    async with self.db.acquire() as conn:
                        await outbox.redispatch_waiting(conn, 0.0)
                return
            except Exception as exc:
                # Not only outages: a start that hit a deadlock or a bug in one row
                # retries like any pass of a loop (counted as loop "stream_prepare").
                if isinstance(exc, OUTAGE):
                    log.warning("streams_unavailable", error=repr(exc))
                else:
                    log.error(
                        "loop_failed",
                        exc=True,
                        loop="stream_prepare",
                        error_class=type(exc).__name__,
                        error=repr(exc)[:500],
                        retry_in_s=START_RETRY_S,
                    )
                if self.errors is not None:
                    self.errors.count("stream_prepare", exc)
                await wait_any(stop, None, START_RETRY_S)

    async def _adopt(self, state: StreamState) -> int | None:
        """Compare ``state``'s identity with Postgres's; re-queue when it changed.

        Postgres is asked only when the identity differs from the one this process saw
        last (at start: always). Returns how many tasks were re-queued (None: none, the
        identity is the known one or the first one seen).
        """
        if state.created == self.stream_created:
            return None
        async with self.db.acquire() as conn:
            requeued = await waiting.adopt_stream(conn, self.bus.names.stream, state.created)
        self.stream_created = state.created
        if requeued is not None:
            log.warning("stream_recreated", stream=self.bus.names.stream, requeued=requeued)
            self.on_recreated()
        return requeued

    async def check_stream(self) -> None:
        """Recreate a vanished stream; re-queue what a stream created again lost; audit
        when due. Raises UnavailableError (or a driver error) when NATS or Postgres is
        away.
        """
        state = await self.bus.stream_state()
        if state is None:
            await self.bus.ensure_streams()
            state = await self.bus.stream_state()
            if state is None:
                return
        await self._adopt(state)
        now = asyncio.get_running_loop().time()
        if self.audited_at is None or now - self.audited_at >= self.audit_interval_s:
            if await self.audit.audit_once(state):
                self.on_recreated()
            self.audited_at = now

    async def run(self, stop: asyncio.Event) -> None:
        """Run :meth:`check_stream` every ``interval_s`` while connected, until ``stop``.

        Never raises for an exception of one check (:func:`~taskflow_common.loops.run_loop`,
        ``loop="stream_watch"``).
        """
        await run_loop("stream_watch", self._round, stop, errors=self.errors)

    async def _round(self) -> float:
        if self.bus.connected:
            await self.check_stream()
        return self.interval_s
