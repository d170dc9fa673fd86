"""taskflow_common.ticks.plan: the missed-tick and overlap policies, with a made-up clock."""

from __future__ import annotations

import datetime as dt

import pytest

from taskflow_common.cadence import Cadence
from taskflow_common.ticks import Plan, Policy, PreviousRun, plan

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
EVERY_10S = Cadence.parse(every="10s")
GRACE = 5.0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def run(policy: Policy, now_s: float, previous: PreviousRun | None = None) -> Plan:
    return plan(EVERY_10S, policy, T0, at(now_s), previous, grace_s=GRACE)


def test_not_due_yet_does_nothing() -> None:
    p = run(Policy(), -1)
    assert p == Plan((), T0)


def test_an_on_time_tick_fires_and_the_next_is_stored() -> None:
    p = run(Policy(), 0.05)
    assert p.fire == (T0,)
    assert p.next_fire_at == at(10)
    assert (p.late, p.skipped_missed, p.skipped_overlap, p.held) == (0, 0, 0, False)


def test_ticks_within_the_grace_all_fire() -> None:
    cadence = Cadence.parse(every="1s")
    p = plan(cadence, Policy(), T0, at(3.5), None, grace_s=GRACE)
    assert p.fire == (T0, at(1), at(2), at(3))
    assert p.next_fire_at == at(4)


def test_skip_drops_missed_ticks_and_resumes_at_the_next_tick() -> None:
    p = run(Policy(missed="skip"), 3600.5)  # down for an hour
    assert p.fire == (at(3600),)  # on time (0.5 s old)
    assert p.skipped_missed == 360  # 0, 10, ..., 3590
    assert p.next_fire_at == at(3610)


def test_skip_with_nothing_on_time_fires_nothing() -> None:
    p = run(Policy(missed="skip"), 3606)
    assert p.fire == ()
    assert p.skipped_missed == 361
    assert p.next_fire_at == at(3610)


def test_catch_up_fires_the_newest_missed_ticks_oldest_first() -> None:
    p = run(Policy(missed="catch_up", catch_up_max=3), 100.5)
    # missed: 0..90 (10 ticks; 95.5 is the cutoff); on time: 100
    assert p.fire == (at(70), at(80), at(90), at(100))
    assert p.late == 3
    assert p.skipped_missed == 7
    assert p.next_fire_at == at(110)


def test_catch_up_within_its_bound_loses_nothing() -> None:
    p = run(Policy(missed="catch_up", catch_up_max=100), 100.5)
    assert p.fire == tuple(at(s) for s in range(0, 101, 10))
    assert p.skipped_missed == 0


def test_overlap_allow_fires_while_the_last_run_goes_on() -> None:
    p = run(Policy(overlap="allow"), 0.1, PreviousRun(running=True))
    assert p.fire == (T0,)


def test_overlap_skip_skips_while_the_last_run_goes_on() -> None:
    p = run(Policy(overlap="skip"), 0.1, PreviousRun(running=True))
    assert p.fire == ()
    assert p.skipped_overlap == 1
    assert p.next_fire_at == at(10)


def test_overlap_skip_fires_only_the_first_of_several_ticks() -> None:
    p = run(Policy(missed="catch_up", overlap="skip"), 30.1, PreviousRun(running=False))
    assert p.fire == (T0,)
    assert p.skipped_overlap == 3
    assert p.next_fire_at == at(40)


def test_overlap_queue_holds_while_the_last_run_goes_on() -> None:
    p = run(Policy(overlap="queue"), 42, PreviousRun(running=True))
    assert p == Plan((), T0, held=True)


def test_overlap_queue_fires_the_waiting_tick_when_the_run_ended() -> None:
    # The run ended at 42 s, after the tick at 0 came due: that tick waited and fires,
    # though it is older than the grace; the missed ones after it follow missed=skip.
    p = run(Policy(overlap="queue"), 42.5, PreviousRun(running=False, finished_at=at(42)))
    assert p.fire == (T0,)
    assert p.late == 1
    assert p.skipped_missed == 3  # 10, 20, 30
    assert p.next_fire_at == at(40)  # on time, waits behind the run just made
    assert p.held


def test_overlap_queue_without_a_wait_is_like_any_tick() -> None:
    done_before = PreviousRun(running=False, finished_at=at(-1))
    p = run(Policy(overlap="queue"), 0.1, done_before)
    assert p.fire == (T0,)
    assert p.next_fire_at == at(10)
    assert not p.held


def test_a_pass_fires_at_most_limit_ticks_and_goes_on_next_time() -> None:
    cadence = Cadence.parse(every="1s")
    policy = Policy(missed="catch_up", catch_up_max=1000)
    p = plan(cadence, policy, T0, at(2000), None, grace_s=GRACE, limit=100)
    assert len(p.fire) == 100
    assert p.fire[0] == at(2000 - 5 - 1000)  # the newest 1000 missed, oldest first
    assert p.next_fire_at == p.fire[-1] + dt.timedelta(seconds=1)
    assert not p.held


@pytest.mark.parametrize("missed", ["skip", "catch_up"])
def test_no_tick_is_both_fired_and_skipped(missed: str) -> None:
    cadence = Cadence.parse(cron="*/5 * * * * *")
    policy = Policy(missed=missed, catch_up_max=7)  # type: ignore[arg-type]
    p = plan(cadence, policy, T0, at(121), None, grace_s=GRACE)
    total = cadence.count(T0, at(121.000001))
    assert len(p.fire) + p.skipped_missed == total
    assert list(p.fire) == sorted(set(p.fire))
    assert p.next_fire_at == at(125)
