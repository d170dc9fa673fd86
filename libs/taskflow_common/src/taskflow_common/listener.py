"""One Postgres ``LISTEN`` connection held for the life of a process, reconnected on loss.

Notifications are hints, never the record: while the connection is down nothing is
notified, so every (re)connect calls ``on_connect`` and the owner catches up by reading
the tables (the dispatcher's outbox pass, the API's waiters re-reading their task).

A lost connection is noticed three ways: asyncpg's termination listener (the socket
closed), a ``SELECT 1`` every ``keepalive_s`` on the idle connection (a frozen or
half-open server, which closes nothing), and an outage error from either. Reconnects
back off with :class:`taskflow_common.retry.Backoff` and start over after a connection
that came up.

Log events (``<log_as>`` set by the owner): ``<log_as>_listening`` (INFO, connected),
``<log_as>_unavailable`` (WARNING: error, retry_in_s), ``<log_as>_connection_lost``
(WARNING: the server closed the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from taskflow_common import db as dbmod
from taskflow_common.config import CommonSettings
from taskflow_common.db import TRANSIENT_ERRORS as PG_ERRORS
from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.retry import OUTAGE, Backoff

log = get_logger(__name__)

KEEPALIVE_S = 5.0
"""Default seconds between two ``SELECT 1`` on the idle connection."""


class Listener:
    """``LISTEN channel`` on a dedicated connection, kept up until a stop event is set.

    ``on_notify(payload)`` runs on the event loop for each notification (keep it quick:
    it is an asyncpg callback); ``on_connect()`` after every (re)connect, once the
    ``LISTEN`` is in place, so nothing committed after it goes unnotified. ``backoff``
    defaults to ``Backoff()`` (0.1 s doubling to 2 s).
    """

    def __init__(
        self,
        settings: CommonSettings,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_connect: Callable[[], None] | None = None,
        keepalive_s: float = KEEPALIVE_S,
        backoff: Backoff | None = None,
        log_as: str = "listen",
    ) -> None:
        self._settings = settings
        self.channel = channel
        self._on_notify = on_notify
        self._on_connect = on_connect
        self.keepalive_s = keepalive_s
        self._backoff = backoff or Backoff()
        self._log_as = log_as
        self.listening = False
        """True while the LISTEN connection is up."""

    def _deliver(self, conn: object, pid: int, channel: str, payload: str) -> None:
        """asyncpg listener callback: hand the payload on."""
        self._on_notify(payload)

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the LISTEN connection until ``stop`` is set; reconnect when it drops.

        Never raises for a Postgres outage: logs ``<log_as>_unavailable`` and retries
        after the backoff's next delay. Errors raised by the callbacks propagate.
        """
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await dbmod.connect(self._settings)
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._deliver)
                self.listening = True
                if self._on_connect is not None:
                    self._on_connect()
                log.info(f"{self._log_as}_listening", channel=self.channel)
                self._backoff.reset()
                await self._keep_alive(conn, stop, lost)
            except OUTAGE as exc:
                log.warning(
                    f"{self._log_as}_unavailable",
                    error=repr(exc),
                    retry_in_s=self._backoff.current_s,
                )
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(*PG_ERRORS):
                        await conn.close(timeout=2)
            if not stop.is_set():
                await wait_any(stop, None, self._backoff.failed())

    async def _keep_alive(
        self, conn: asyncpg.Connection, stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        """Return when ``stop`` is set or the connection is lost (raises PG errors)."""
        while not stop.is_set() and not lost.is_set() and not conn.is_closed():
            await wait_any(stop, lost, self.keepalive_s)
            if not stop.is_set() and not lost.is_set():
                await conn.fetchval("SELECT 1")  # a frozen or half-open server shows here
        if lost.is_set():
            log.warning(f"{self._log_as}_connection_lost", channel=self.channel)
