"""Outages and how long-running loops back off from them: one definition for every service.

``OUTAGE`` is the tuple of exceptions that mean "a dependency is away, try again later":
TaskFlow's own :class:`~taskflow_common.errors.UnavailableError` plus the transient driver
errors of asyncpg (``taskflow_common.db.TRANSIENT_ERRORS``) and nats-py
(``taskflow_common.bus.transient.TRANSIENT_ERRORS``).

:class:`Backoff` is the delay schedule of a loop that retries an iteration while such an
outage lasts: it doubles from ``initial_s`` up to ``max_s`` and starts over after a success.
It carries state across iterations of a ``while not stop`` loop, which a decorator-style
retry library (``stamina``, ``tenacity``) does not model: those retry one call a bounded
number of times, whereas these loops run for the life of the process and must keep the
schedule between calls. ``stamina`` stays the tool for bounded retries of one call.
"""

from __future__ import annotations

import random

from taskflow_common.bus.transient import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.db import TRANSIENT_ERRORS as PG_ERRORS
from taskflow_common.errors import UnavailableError

OUTAGE: tuple[type[BaseException], ...] = (UnavailableError, *PG_ERRORS, *NATS_ERRORS)
"""Exceptions that mean Postgres or NATS is unreachable for now (retry, never give up)."""

INITIAL_S = 0.1
"""First delay after a failure, seconds."""

MAX_S = 2.0
"""Longest delay between two tries of one loop, seconds: an outage's end is noticed within it."""


class Backoff:
    """Doubling delays for a long-running loop: ``initial_s``, 2x, 4x, ... capped at ``max_s``.

    ``jitter`` (a fraction, 0 by default) widens each delay by up to that share, drawn
    uniformly, so that many processes that lost the same server do not come back in step
    (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).

    Use: ``delay = backoff.failed()`` after a failed iteration (then wait ``delay`` seconds),
    ``backoff.reset()`` after a successful one. Raises ``ValueError`` for non-positive
    bounds, ``initial_s > max_s`` or a negative ``jitter``.
    """

    __slots__ = ("_delay", "initial_s", "jitter", "max_s")

    def __init__(
        self, initial_s: float = INITIAL_S, max_s: float = MAX_S, jitter: float = 0.0
    ) -> None:
        if initial_s <= 0 or max_s <= 0 or initial_s > max_s or jitter < 0:
            raise ValueError("need 0 < initial_s <= max_s and jitter >= 0")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._delay = initial_s

    @property
    def current_s(self) -> float:
        """The delay the next :meth:`failed` returns (before jitter), seconds."""
        return self._delay

    def failed(self) -> float:
        """Return the seconds to wait after this failure and double the next delay."""
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_s)
        if self.jitter:
            delay += random.uniform(0.0, delay * self.jitter)
        return delay

    def reset(self) -> None:
        """Start over from ``initial_s`` (call after a successful iteration)."""
        self._delay = self.initial_s
