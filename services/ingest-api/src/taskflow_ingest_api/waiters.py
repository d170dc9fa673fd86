"""Wake the requests waiting on a task, from ONE ``LISTEN`` connection per API process.

``GET /api/v1/tasks/{id}?wait=...`` and ``GET /api/v1/tasks/{id}/events`` park on a
:class:`Waiter` instead of polling Postgres. :class:`TaskEvents` holds a single
connection listening on :data:`~taskflow_common.store.events.CHANNEL` (migrations
0002-0004 notify it at commit of every task status change, and of every execution status
change other than ``succeeded``; an execution's insert and its success come in the
statement that changes the task's status) and hands each notification to the waiters
of that task (a dict lookup). A parked waiter costs an ``asyncio.Event`` and a timer:
hundreds of them use no CPU while nothing happens.

Waiters re-read the rows themselves when woken; notifications are only hints. What
can be missed is covered so: a waiter registers *before* its first read (a change
committed after that read is notified to it); while the LISTEN connection is down
nothing is notified, so on every (re)connect all waiters are woken to re-read; a
waiter whose wake-up never comes still re-reads when its own deadline ends.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType
from typing import Self

from taskflow_common.config import CommonSettings
from taskflow_common.listener import Listener
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import Backoff
from taskflow_common.store.events import CHANNEL, TaskEvent

log = get_logger(__name__)

KEEPALIVE_S = 5.0
"""How often the idle LISTEN connection runs ``SELECT 1`` to notice a dead server."""
RECONNECT_MAX_S = 5.0
"""Longest pause between reconnect attempts (backoff from 0.1 s)."""


class Waiter:
    """One request waiting on one task; a context manager that unregisters on exit.

    :meth:`changed` returns once something happened to the task since the last call.
    :meth:`take_terminal_hint` says whether that may have been the end (a terminal
    status was notified, or the listener reconnected and anything may have happened).
    """

    __slots__ = ("_event", "_hub", "_terminal_hint", "task_id")

    def __init__(self, hub: TaskEvents, task_id: uuid.UUID) -> None:
        self._hub = hub
        self.task_id = task_id
        self._event = asyncio.Event()
        self._terminal_hint = False

    def push(self, event: TaskEvent | None) -> None:
        """Record a notification for this task (None: unknown change, re-read)."""
        if event is None or event.terminal:
            self._terminal_hint = True
        self._event.set()

    async def changed(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for a change; True if one came (then reset)."""
        if not self._event.is_set():
            try:
                async with asyncio.timeout(max(timeout_s, 0.0)):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return True

    def take_terminal_hint(self) -> bool:
        """True (once) when a change since the last call may have ended the task."""
        hint, self._terminal_hint = self._terminal_hint, False
        return hint

    def close(self) -> None:
        """Stop receiving notifications (idempotent)."""
        self._hub.forget(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TaskEvents:
    """The process's one LISTEN connection and the waiters it wakes, by task id.

    :meth:`run` keeps the connection open (reconnecting with backoff) until its stop
    event is set; :meth:`watch` registers a waiter; :meth:`close` wakes every waiter
    for good (shutdown: long polls answer with the current state, streams end).
    """

    def __init__(self, settings: CommonSettings, errors: LoopErrors | None = None) -> None:
        self._errors = errors
        self._waiters: dict[uuid.UUID, set[Waiter]] = {}
        # Anything may have changed while nobody listened: on every (re)connect, every
        # waiter re-reads.
        self._listener = Listener(
            settings,
            CHANNEL,
            self._notified,
            on_connect=self._wake_all,
            keepalive_s=KEEPALIVE_S,
            backoff=Backoff(max_s=RECONNECT_MAX_S),
            log_as="task_events",
        )
        self.closing = False
        """True once :meth:`close` was called; waiters should answer and stop."""
        self.notifications = 0
        """Notifications received (all tasks), for tests and diagnostics."""

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._listener.listening

    @property
    def waiting(self) -> int:
        """Number of registered waiters."""
        return sum(len(group) for group in self._waiters.values())

    def watch(self, task_id: uuid.UUID) -> Waiter:
        """Register and return a waiter on ``task_id`` (use it as a context manager)."""
        waiter = Waiter(self, task_id)
        self._waiters.setdefault(task_id, set()).add(waiter)
        if self.closing:
            waiter.push(None)
        return waiter

    def forget(self, waiter: Waiter) -> None:
        """Unregister ``waiter`` (no-op when it is not registered)."""
        group = self._waiters.get(waiter.task_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.task_id]

    def close(self) -> None:
        """Wake every waiter and mark the hub closing (new waiters wake at once)."""
        self.closing = True
        self._wake_all()

    def _wake_all(self) -> None:
        for group in self._waiters.values():
            for waiter in group:
                waiter.push(None)

    def _notified(self, payload: str) -> None:
        """Listener callback: one notification on :data:`CHANNEL`."""
        self.notifications += 1
        event = TaskEvent.parse(payload)
        if event is None:
            log.warning("task_event_unreadable", payload=payload[:200])
            return
        for waiter in self._waiters.get(event.task_id, ()):
            waiter.push(event)

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the LISTEN connection until ``stop`` is set; reconnect when it drops.

        Never raises for a Postgres outage: it logs ``task_events_unavailable`` and
        retries with backoff (0.1 s doubling to :data:`RECONNECT_MAX_S`); see
        :class:`taskflow_common.listener.Listener`. Any other error of a pass is survived
        too (:func:`~taskflow_common.loops.run_loop`, loop ``task_events``: logged with
        its class, counted in ``errors``, backed off); only cancellation ends it early.
        """

        async def listen() -> None:
            await self._listener.run(stop)

        await run_loop("task_events", listen, stop, errors=self._errors)
