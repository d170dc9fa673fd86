"""Long-running loops that survive any error of one iteration.

Every background duty of a service (the dispatcher's outbox sweep, its reaper, a worker's
fetch loop, the dlq-monitor's consumer) is a loop that must outlive whatever one pass
raises: an outage, a deadlock the database broke, a bug hit by one odd row. A process exits
only on purpose (its stop event, a failed start), never because one pass raised.

:func:`run_loop` runs one iteration at a time until ``stop`` is set. An iteration that
raises is logged (``loop_failed`` with the loop's name and the exception's class; WARNING for
an outage, ERROR with the traceback for anything else), counted in
``taskflow_loop_errors_total{loop, error}``, and followed by a wait from a shared
:class:`~taskflow_common.retry.Backoff` before the next one. ``asyncio.CancelledError`` and
other ``BaseException``\\ s that are not ``Exception`` (``KeyboardInterrupt``,
``SystemExit``) are never swallowed: cancellation is how a task group stops its loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from taskflow_common.lifecycle import wait_any
from taskflow_common.logs import get_logger
from taskflow_common.retry import OUTAGE, Backoff

log = get_logger("taskflow.loops")

Iteration = Callable[[], Awaitable[float | None]]
"""One pass of a loop: returns seconds to wait before the next pass (``None``/0: none)."""


class LoopErrors:
    """The ``taskflow_loop_errors_total{loop, error}`` counter of one service's registry.

    ``error`` is the exception's class name (a small, closed set in practice: the
    classes a pass can raise), never its message, so no secret or id becomes a label.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "taskflow_loop_errors",
            "Iterations of a long-running loop that raised, by loop and exception class "
            "(the loop logged it, backed off and went on).",
            ["loop", "error"],
            registry=registry,
        )

    def count(self, loop: str, exc: BaseException) -> None:
        """Add one failed iteration of ``loop`` that raised ``exc``."""
        self.counter.labels(loop, type(exc).__name__).inc()


async def run_loop(
    name: str,
    iteration: Iteration,
    stop: asyncio.Event,
    *,
    errors: LoopErrors | None,
    backoff: Backoff | None = None,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``iteration`` until ``stop`` is set, surviving any ``Exception`` it raises.

    After a pass that returned ``wait`` seconds, the loop waits that long (or until ``stop``
    or ``wake`` is set; ``wake`` is cleared before each pass, so a wake-up during a pass
    is kept). After a pass that raised, it
    logs ``loop_failed`` (``loop``, ``error_class``, ``error``, ``retry_in_s``), counts it in
    ``errors`` and waits ``backoff.failed()`` seconds (default ``Backoff()``: 0.1 s doubling
    to 2 s); the first successful pass resets the backoff. Returns when ``stop`` is set;
    raises only what is not an ``Exception`` (e.g. ``CancelledError``).
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        if wake is not None:
            # Cleared before the pass, never after it: a wake-up that arrives while the
            # pass runs (work the pass may not have seen) cuts the following wait short.
            wake.clear()
        try:
            wait = await iteration()
        except Exception as exc:
            delay = backoff.failed()
            fields = {
                "loop": name,
                "error_class": type(exc).__name__,
                "error": repr(exc)[:500],
                "retry_in_s": round(delay, 3),
            }
            if isinstance(exc, OUTAGE):
                log.warning("loop_failed", **fields)
            else:
                log.error("loop_failed", exc=True, **fields)
            if errors is not None:
                errors.count(name, exc)
            await wait_any(stop, None, delay)
            continue
        backoff.reset()
        if wait:
            await wait_any(stop, wake, wait)
