"""taskflow_common.cadence: parsing, tick iteration, and DST in Europe/Berlin."""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

import pytest

from taskflow_common.cadence import Cadence, InvalidCadence

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def local(*args: int, fold: int = 0) -> dt.datetime:
    """An instant given as Berlin wall time."""
    return dt.datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[arg-type,misc]


def walk(c: Cadence, start: dt.datetime, n: int) -> list[dt.datetime]:
    out, t = [], start
    for _ in range(n):
        t = c.after(t, t)
        out.append(t)
    return out


def berlin(ticks: list[dt.datetime]) -> list[str]:
    return [t.astimezone(BERLIN).isoformat() for t in ticks]


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "timezone"),
        ({"cron": "* * * * *", "timezone": ""}, "timezone"),
        ({"every": "500ms"}, "every"),
        ({"every": "0s"}, "every"),
        ({"every": "soon"}, "every"),
        ({"every": "400d"}, "every"),
        ({"every": True}, "every"),
        ({"every": "30s", "timezone": "UTC"}, "timezone"),
        ({}, "cron"),
        ({"cron": "* * * * *", "every": "1m"}, "cron"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidCadence) as info:
        Cadence.parse(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_accepts_five_and_six_fields_macros_and_names() -> None:
    assert Cadence.parse(cron="*/5  *  * * *").cron == "*/5 * * * *"
    assert Cadence.parse(cron="@daily", timezone="Europe/Berlin").cron == "0 0 * * *"
    assert Cadence.parse(cron="0 0 9 * * MON-FRI").cron == "0 0 9 * * MON-FRI"
    c = Cadence.parse(every="1m")
    assert (c.every_s, c.cron, c.timezone) == (60.0, None, "UTC")
    assert Cadence.parse(every=1).every_s == 1.0


def test_six_fields_put_seconds_first() -> None:
    c = Cadence.parse(cron="*/20 * * * * *")
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert walk(c, start, 4) == [start + dt.timedelta(seconds=s) for s in (20, 40, 60, 80)]


def test_interval_ticks_keep_their_phase() -> None:
    c = Cadence.parse(every="30s")
    origin = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert c.after(origin + dt.timedelta(seconds=95), origin) == origin + dt.timedelta(seconds=120)
    assert c.after(origin - dt.timedelta(hours=1), origin) == origin
    ticks = c.ticks(origin, origin + dt.timedelta(seconds=60))
    assert ticks == [origin + dt.timedelta(seconds=s) for s in (0, 30, 60)]
    assert c.count(origin, origin + dt.timedelta(seconds=60)) == 2  # [start, end)
    assert c.count(origin, origin + dt.timedelta(seconds=61)) == 3
    assert c.latest(origin, origin + dt.timedelta(seconds=300), 2) == [
        origin + dt.timedelta(seconds=240),
        origin + dt.timedelta(seconds=270),
    ]


def test_first_tick_of_an_interval_is_on_the_whole_second() -> None:
    c = Cadence.parse(every="10s")
    now = dt.datetime(2026, 1, 1, 0, 0, 0, 700_000, tzinfo=UTC)
    assert c.first_tick(now) == dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    cron = Cadence.parse(cron="* * * * *")
    assert cron.first_tick(now) == dt.datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_cron_reads_fields_in_its_zone() -> None:
    c = Cadence.parse(cron="0 9 * * *", timezone="Europe/Berlin")
    winter = dt.datetime(2026, 1, 10, 0, 0, tzinfo=UTC)
    summer = dt.datetime(2026, 7, 10, 0, 0, tzinfo=UTC)
    assert c.after(winter, winter) == dt.datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
    assert c.after(summer, summer) == dt.datetime(2026, 7, 10, 7, 0, tzinfo=UTC)


# -- DST, time of day (fixed minute and hour) -------------------------------------------


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 30 2 * * *"])
def test_spring_gap_fires_at_the_next_valid_time(expr: str) -> None:
    c = Cadence.parse(cron=expr, timezone="Europe/Berlin")
    got = berlin(walk(c, local(2026, 3, 28, 12), 3))
    # 02:30 does not exist on 29 March: it fires when the clocks jump, 03:00 CEST.
    assert got == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 30 2 * * *"])
def test_autumn_repeat_fires_once_at_the_first_occurrence(expr: str) -> None:
    c = Cadence.parse(cron=expr, timezone="Europe/Berlin")
    got = berlin(walk(c, local(2026, 10, 24, 12), 3))
    assert got == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_autumn_repeat_starting_inside_the_second_occurrence_does_not_go_back() -> None:
    c = Cadence.parse(cron="30 2 * * *", timezone="Europe/Berlin")
    second_0210 = local(2026, 10, 25, 2, 10, fold=1)
    assert berlin([c.after(second_0210, second_0210)]) == ["2026-10-26T02:30:00+01:00"]


def test_several_ticks_in_the_gap_fire_once() -> None:
    c = Cadence.parse(cron="0,15,30,45 2 * * *", timezone="Europe/Berlin")
    start = local(2026, 3, 29, 0, 0)
    got = berlin(c.ticks(c.after(start, start), local(2026, 3, 30, 0, 0)))
    assert got == ["2026-03-29T03:00:00+02:00"]


def test_time_of_day_walks_backwards_through_both_transitions() -> None:
    c = Cadence.parse(cron="30 2 * * *", timezone="Europe/Berlin")
    spring = c.latest(local(2026, 3, 28, 2, 30), local(2026, 3, 31, 0, 0), 5)
    assert berlin(spring) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    autumn = c.latest(local(2026, 10, 24, 2, 30), local(2026, 10, 26, 12, 0), 5)
    assert berlin(autumn) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


# -- DST, elapsed time (wildcard minute or hour) ------------------------------------------


def test_hourly_follows_real_time_across_both_transitions() -> None:
    c = Cadence.parse(cron="0 * * * *", timezone="Europe/Berlin")
    spring = berlin(walk(c, local(2026, 3, 29, 0, 30), 3))
    assert spring == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]
    autumn = berlin(walk(c, local(2026, 10, 25, 0, 30), 4))
    assert autumn == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    gaps = {b - a for a, b in itertools.pairwise(walk(c, local(2026, 10, 25, 0, 30), 5))}
    assert gaps == {dt.timedelta(hours=1)}


def test_count_and_latest_agree_with_ticks_for_cron() -> None:
    c = Cadence.parse(cron="*/7 * * * *", timezone="Europe/Berlin")
    start = c.after(local(2026, 3, 29, 0, 0), local(2026, 3, 29, 0, 0))
    end = local(2026, 3, 29, 6, 0)
    every = c.ticks(start, end)
    assert c.count(start, end) == len([t for t in every if t < end])
    assert c.latest(start, end, 4) == [t for t in every if t < end][-4:]
    assert c.count(start, end, cap=3) == 3
