"""The stream watch: recreate vanished streams and re-queue what their messages carried.

A NATS server restarted on an empty store (or a deleted stream) loses every published
but unclaimed task message. Every ``DISPATCHER_STREAM_CHECK_INTERVAL`` the watch reads
the task stream's creation time; when the stream is missing it recreates both streams,
and when the creation time changed it re-queues every published-but-unclaimed task
(``redispatch_waiting``) and wakes the outbox sweeper to publish them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import OUTAGE
from taskflow_common.store import outbox

log = get_logger(__name__)

START_RETRY_S = 1.0
"""Seconds between two tries to reconcile the streams at start while NATS is away."""


class StreamWatch:
    """Keeps the streams present; ``on_recreated()`` runs after a re-queue.

    :meth:`prepare` reconciles the streams once at start; :meth:`run` watches them
    every ``interval_s`` seconds until stopped.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        interval_s: float,
        on_recreated: Callable[[], None],
        errors: LoopErrors | None = None,
    ) -> None:
        self.errors = errors
        self.db = db
        self.bus = bus
        self.interval_s = interval_s
        self.on_recreated = on_recreated
        self.stream_created: str | None = None
        """The task stream's creation time as last seen (None before :meth:`prepare`)."""

    async def prepare(self, stop: asyncio.Event) -> None:
        """Make sure the streams exist, retrying every :data:`START_RETRY_S` while NATS
        (or Postgres) is away; returns early when ``stop`` is set.

        A task stream created now has lost any message published before, so every
        published-but-unclaimed task is re-queued.
        """
        while not stop.is_set():
            try:
                created = await self.bus.ensure_streams()
                self.stream_created = await self.bus.stream_created_at()
                if created:
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

    async def check_stream(self) -> None:
        """Recreate vanished streams; re-queue published-but-unclaimed tasks if so.

        Raises UnavailableError (or a driver error) when NATS or Postgres is away.
        """
        created = await self.bus.stream_created_at()
        if created is None:
            await self.bus.ensure_streams()
            created = await self.bus.stream_created_at()
        if created != self.stream_created:
            if self.stream_created is not None:
                async with self.db.acquire() as conn:
                    n = await outbox.redispatch_waiting(conn, 0.0)
                log.warning("stream_recreated", stream=self.bus.names.stream, requeued=n)
                self.on_recreated()
            self.stream_created = created

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
