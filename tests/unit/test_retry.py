"""The shared outage backoff of long-running loops (taskflow_common.retry)."""

from __future__ import annotations

import asyncpg
import nats.errors
import pytest

from taskflow_common.errors import UnavailableError
from taskflow_common.retry import OUTAGE, Backoff


def test_doubles_to_the_cap_and_starts_over_after_reset() -> None:
    backoff = Backoff(0.1, 2.0)
    assert [round(backoff.failed(), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    backoff.reset()
    assert backoff.failed() == pytest.approx(0.1)


def test_jitter_stays_within_its_share() -> None:
    backoff = Backoff(1.0, 1.0, jitter=0.5)
    delays = [backoff.failed() for _ in range(200)]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(("initial", "maximum", "jitter"), [(0, 1, 0), (2, 1, 0), (1, 1, -1)])
def test_rejects_bad_bounds(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial, maximum, jitter)


def test_outage_covers_both_drivers_and_our_own_error() -> None:
    assert UnavailableError in OUTAGE
    assert issubclass(asyncpg.exceptions.ConnectionDoesNotExistError, OUTAGE)
    assert issubclass(nats.errors.ConnectionClosedError, OUTAGE)
    assert not issubclass(ValueError, OUTAGE)
