"""Retry delays: exponential backoff with jitter, with a guaranteed floor.

For the n-th counted failure of a task (n >= 1)::

    floor = min(WORKER_BACKOFF_MAX, WORKER_BACKOFF_BASE * 2 ** (n - 1))
    delay = uniform(floor, min(WORKER_BACKOFF_MAX, floor * 1.5))

The exponential schedule and the point of randomising it come from Marc Brooker,
"Exponential Backoff And Jitter" (AWS Architecture Blog, 2015): without jitter, tasks
that failed together (a dependency outage) retry together and fail together again.
Brooker's "full jitter" draws from ``[0, floor]``; we draw across a window *above* the
floor instead, so an attempt never starts sooner than the documented gap (users rely on
"attempt 2 no earlier than BASE") while retries are still spread over up to half the
step. With BASE=1 s the gaps are 1-1.5 s, 2-3 s, 4-6 s, ... capped at MAX.
"""

from __future__ import annotations

import random

JITTER_SPAN = 0.5
"""Width of the jitter window above the floor, as a fraction of the floor."""


def backoff_window(failures: int, base_s: float, max_s: float) -> tuple[float, float]:
    """Return ``(low, high)`` seconds for the delay after the ``failures``-th failure.

    ``failures`` counts from 1. Raises ``ValueError`` for ``failures < 1`` or a
    non-positive ``base_s``/``max_s``.
    """
    if failures < 1 or base_s <= 0 or max_s <= 0:
        raise ValueError("failures must be >= 1 and base/max positive")
    # Cap the exponent so 2 ** n never overflows for huge attempt counts.
    floor = min(max_s, base_s * 2 ** min(failures - 1, 62))
    return floor, min(max_s, floor * (1 + JITTER_SPAN))


def backoff_delay(
    failures: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Draw the delay in seconds before retrying after the ``failures``-th failure."""
    low, high = backoff_window(failures, base_s, max_s)
    return (rng or random).uniform(low, high)
