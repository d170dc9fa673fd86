"""The worker's priority policy (pure logic): strict order, aging, rate-limited probes."""

from __future__ import annotations

import pytest

from taskflow_worker.fetcher import Aging
from taskflow_worker.settings import parse_max_wait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Ages by priority as the server would report them; counts the calls."""

    def __init__(self) -> None:
        self.ages: dict[str, float | None] = {"normal": None, "low": None}
        self.calls: list[str] = []

    async def __call__(self, priority: str) -> float | None:
        self.calls.append(priority)
        return self.ages[priority]


def make(probe_s: float = 1.0) -> tuple[Aging, Probe, Clock]:
    probe, clock = Probe(), Clock()
    aging = Aging({"normal": 10.0, "low": 20.0}, probe, probe_s, clock)  # type: ignore[arg-type]
    return aging, probe, clock


async def test_no_probe_unless_a_higher_priority_was_served() -> None:
    aging, probe, _ = make()
    assert await aging.overdue() == []
    aging.served({"low"})
    assert await aging.overdue() == []
    assert probe.calls == []
    aging.served({"normal"})
    await aging.overdue()
    assert probe.calls == ["low"]


async def test_a_message_waiting_past_its_bound_is_promoted() -> None:
    aging, probe, clock = make()
    probe.ages = {"normal": 4.0, "low": 4.0}
    aging.served({"high"})
    assert await aging.overdue() == []
    # No new probe needed: the cached age grows with the clock.
    clock.now += 6.0
    assert await aging.overdue() == ["normal"]
    clock.now += 10.0
    # normal is 10 s past its bound, low 0 s: the most overdue goes first.
    assert await aging.overdue() == ["normal", "low"]
    aging.promoted_one("normal")
    assert await aging.overdue() == ["low"]


async def test_probes_are_rate_limited_per_priority() -> None:
    aging, probe, clock = make(probe_s=1.0)
    for _ in range(5):
        aging.served({"high"})
        await aging.overdue()
        clock.now += 0.3
    assert probe.calls.count("normal") == 2  # at 100.0 and 101.2


def test_max_wait_parsing() -> None:
    assert parse_max_wait("normal=45s,low=50s") == {"normal": 45.0, "low": 50.0}
    assert parse_max_wait("low=2m, normal=500ms") == {"normal": 0.5, "low": 120.0}
    for bad in ("normal=45s", "high=1s,normal=2s,low=3s", "normal=0s,low=1s", "normal=x,low=1s"):
        with pytest.raises(ValueError, match="normal=DURATION"):
            parse_max_wait(bad)
