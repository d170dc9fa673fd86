"""One factor for every wall-clock bound a functional test asserts.

Functional tests check behaviour that has a time in it: a delayed task starts when it is
due, a cancel frees the worker at once, a long poll answers when the task ends. The
lower bound of such a check IS the behaviour (never before ``run_at``; a retry waits at
least its backoff) and is never scaled. The upper bound only says "soon", and how soon
a loaded machine manages depends on the machine: on a shared 2-core CI runner, a
process that should answer in 50 ms is sometimes descheduled for half a second. So
every upper bound is written as the figure the code achieves on an idle machine, scaled
by :data:`SLACK`, via :func:`slack` (for "within X s") or :func:`floor_plus` (for "X s after
the floor, with an allowance").

``TASKFLOW_TEST_SLACK`` sets the factor: ``1`` checks the idle-machine figures exactly
(useful when working on latency), the default ``3`` leaves room for a busy CI runner.
How fast the system is belongs to ``make bench``, not here.
"""

from __future__ import annotations

import os

SLACK = float(os.environ.get("TASKFLOW_TEST_SLACK", "3"))
"""Factor on every upper time bound of the functional tests (``TASKFLOW_TEST_SLACK``)."""

if SLACK < 1:
    raise ValueError(f"TASKFLOW_TEST_SLACK must be >= 1 (a bound is never tightened): {SLACK}")


def slack(seconds: float) -> float:
    """The upper bound ``seconds`` (an idle machine's figure) scaled by :data:`SLACK`, in s."""
    return seconds * SLACK


def floor_plus(floor: float, allowance: float) -> float:
    """The upper bound ``floor + allowance * SLACK`` (seconds): only the allowance scales.

    For checks like "starts 2 s after submit, within 0.2 s": the 2 s are the behaviour,
    the 0.2 s how punctual an idle machine is.
    """
    return floor + allowance * SLACK
