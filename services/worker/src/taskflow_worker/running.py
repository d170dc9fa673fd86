"""The attempts running in this process: registered, awaited with bounds, stopped.

:class:`Running` is one claimed attempt whose handler runs here (its message, its
handler's task, why it was stopped, when its lease last started to run);
:class:`RunningAttempts` finds them by execution or task id (the heartbeat renews their
leases, a cancel request finds its attempt). :func:`await_handler` waits for a handler
with a bound: a handler that swallows its cancellation is abandoned as stuck rather
than awaited for ever.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from nats.aio.msg import Msg

from taskflow_common.logs import get_logger
from taskflow_common.store.claims import Claim

log = get_logger(__name__)

StopReason = Literal["timeout", "shutdown", "cancelled", "lease_lost", "lease_unrenewed"]
"""Why a handler was stopped; the first reason given is kept (see :meth:`Running.stop`)."""


@dataclass(eq=False)
class Running:
    """A claimed attempt whose handler is running in this process.

    ``lease_from`` (monotonic seconds) is when the attempt's lease last started to run
    at the latest: the time its claim or last successful renewal was *sent*, so the
    lease in Postgres (counted from when the statement ran) ends no earlier than
    ``lease_from + lease``.
    """

    claim: Claim
    msg: Msg
    task: asyncio.Task[Any] | None = None
    stop_reason: StopReason | None = None
    started: float = field(default_factory=time.monotonic)
    lease_from: float = field(default_factory=time.monotonic)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler, remembering why (decides how the attempt is recorded).

        The first reason stays: a later stop (the lease watch giving up while a timed-out
        handler unwinds, say) never turns a counted timeout into an uncounted interrupt.
        """
        if self.task is not None and not self.task.done():
            self.stop_reason = self.stop_reason or reason
            self.stopped.set()
            self.task.cancel()


class RunningAttempts:
    """The attempts of this process that may still report an outcome, by execution and task.

    An attempt is in here from its claim until its outcome is recorded; the heartbeat
    renews their leases, a cancel request finds its attempt by task id.
    """

    def __init__(self) -> None:
        self._by_execution: dict[uuid.UUID, Running] = {}
        self._by_task: dict[uuid.UUID, Running] = {}

    def __len__(self) -> int:
        return len(self._by_execution)

    def add(self, running: Running) -> None:
        """Register ``running`` under its execution id and its task id."""
        self._by_execution[running.claim.execution_id] = running
        self._by_task[running.claim.task_id] = running

    def discard(self, running: Running) -> None:
        """Forget ``running`` (its task id only while it is still the one registered)."""
        self._by_execution.pop(running.claim.execution_id, None)
        if self._by_task.get(running.claim.task_id) is running:
            del self._by_task[running.claim.task_id]

    def of_task(self, task_id: uuid.UUID) -> Running | None:
        """The attempt of ``task_id`` running here, if any."""
        return self._by_task.get(task_id)

    def snapshot(self) -> list[Running]:
        """Every registered attempt, oldest first (a copy: safe to iterate while awaiting)."""
        return list(self._by_execution.values())


async def await_handler(
    running: Running, limit_s: float, stuck_s: float, stuck: set[asyncio.Task[Any]]
) -> bool:
    """Wait for the handler to end, for ``limit_s`` s or until stopped; True if it ended.

    A handler past its timeout (``limit_s``) is cancelled; a cancelled one (timeout or
    :meth:`Running.stop`) gets ``stuck_s`` more seconds to unwind. One that swallows its
    cancellation is then declared stuck: logged at ERROR once and added to ``stuck``
    while it runs on (nothing can stop a coroutine that will not stop). The caller
    keeps its attempt registered (lease renewed, slot held) until it ends, so no other
    run of the task can start meanwhile (see :class:`~taskflow_worker.attempt.AttemptRunner`).
    """
    task = running.task
    assert task is not None
    stopped = asyncio.ensure_future(running.stopped.wait())
    try:
        await asyncio.wait({task, stopped}, timeout=limit_s, return_when=FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return True
    if running.stop_reason is None:
        running.stop("timeout")  # stopped from outside, it is cancelled already
    await asyncio.wait({task}, timeout=stuck_s)
    if task.done():
        return True
    log.error(
        "handler_stuck",
        reason=running.stop_reason or "timeout",
        waited_s=stuck_s,
        hint="the handler swallows asyncio.CancelledError; its attempt keeps its lease "
        "and slot until the coroutine ends",
    )
    stuck.add(task)
    task.add_done_callback(_forget_stuck(stuck))
    return False


def _forget_stuck(stuck: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(task: asyncio.Task[Any]) -> None:
        stuck.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit

    return forget
