"""The worker's priority policy (pure logic): strict order, aging, rate-limited probes."""

from __future__ import annotations

import pytest

from taskflow_worker.fetcher import Aging, Fetcher
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


class Pulls:
    """Messages waiting per priority, as a consumer would hand them out; logs each pull."""

    def __init__(self, clock: Clock) -> None:
        self.waiting: dict[str, int] = {"high": 0, "normal": 0, "low": 0}
        self.log: list[str] = []
        self.clock = clock

    def puller(self, priority: str) -> object:
        pulls = self

        class _Puller:
            async def pull(self, n: int) -> list[str]:
                pulls.log.append(priority)
                got = min(n, pulls.waiting[priority])
                pulls.waiting[priority] -= got
                return [priority] * got

        return _Puller()


def make_fetcher(empty_s: float = 0.05) -> tuple[Fetcher, Pulls, Clock]:
    clock = Clock()
    pulls = Pulls(clock)
    fetcher = Fetcher(
        {p: pulls.puller(p) for p in ("high", "normal", "low")},  # type: ignore[misc]
        {"normal": 10.0, "low": 20.0},
        Probe(),  # type: ignore[arg-type]
        empty_s=empty_s,
        clock=clock,
    )
    return fetcher, pulls, clock


async def test_a_priority_found_empty_is_skipped_until_its_doorbell_or_a_while() -> None:
    fetcher, pulls, clock = make_fetcher()
    pulls.waiting["normal"] = 100
    assert len(await fetcher.fetch(10)) == 10
    assert pulls.log == ["high", "normal"]
    pulls.log.clear()
    await fetcher.fetch(10)
    assert pulls.log == ["normal"]  # high came back short: skipped
    # New high work rings the doorbell: strict priority, asked first at once.
    pulls.waiting["high"] = 3
    fetcher.wake(["high"])
    pulls.log.clear()
    got = await fetcher.fetch(10)
    assert [p for p, _ in got] == ["high"] * 3 + ["normal"] * 7
    assert pulls.log == ["high", "normal"]
    # A high message that comes back without a ring (a redelivery) waits at most empty_s.
    pulls.waiting["high"] = 1
    pulls.log.clear()
    await fetcher.fetch(10)
    assert pulls.log == ["normal"]
    clock.now += 0.05
    got = await fetcher.fetch(10)
    assert got[0][0] == "high"


async def test_a_full_pull_does_not_mark_a_priority_empty() -> None:
    fetcher, pulls, _ = make_fetcher()
    pulls.waiting["high"] = 10
    await fetcher.fetch(10)
    pulls.waiting["high"] = 5
    pulls.log.clear()
    await fetcher.fetch(10)
    assert pulls.log[0] == "high"
    # An empty ring (an older dispatcher) wakes every priority.
    fetcher.wake([""])
    pulls.log.clear()
    await fetcher.fetch(10)
    assert pulls.log == ["high", "normal", "low"]
