"""Schedules driven by a simulated clock: DST, missed ticks, pause, overlap, the loop's pace.

The store and the tick pass against real Postgres, as in test_schedules.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import statistics
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskflow_common.config import CommonSettings, load
from taskflow_common.db import Database, open_pool
from taskflow_common.store import schedule_ticks, schedules
from taskflow_common.store.schedules import ScheduleSpec
from taskflow_dispatcher.schedules import ScheduleTicker
from tests.support.schedules import (
    BERLIN,
    T0,
    cron,
    every,
    seconds,
    set_last_run,
    ticker,
    ticks_of,
)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_pool(load(CommonSettings, {"DATABASE_URL": database_url})) as pool:
        yield pool


# -- DST with a simulated clock --------------------------------------------------------------


async def run_clock(t: ScheduleTicker, database: Database, until: dt.datetime) -> None:
    """Jump the clock from due tick to due tick (10 ms late each) until ``until``."""
    while True:
        async with database.acquire() as conn:
            due = await conn.fetchval("SELECT min(next_fire_at) FROM schedules WHERE NOT paused")
        if due is None or due > until:
            return
        await t.tick_once(now=due + dt.timedelta(milliseconds=10))


@pytest.mark.parametrize(
    ("start", "until", "daily", "hourly_02"),
    [
        (
            dt.datetime(2026, 3, 28, 12, tzinfo=BERLIN),
            dt.datetime(2026, 3, 31, 0, tzinfo=BERLIN),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            [],  # 02:00-03:00 does not exist on 29 March
        ),
        (
            dt.datetime(2026, 10, 24, 12, tzinfo=BERLIN),
            dt.datetime(2026, 10, 27, 0, tzinfo=BERLIN),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
            ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"],  # both occurrences
        ),
    ],
    ids=["spring", "autumn"],
)
async def test_dst_transitions_of_berlin(
    database: Database,
    start: dt.datetime,
    until: dt.datetime,
    daily: list[str],
    hourly_02: list[str],
) -> None:
    async with database.acquire() as conn:
        await schedules.create(conn, cron("daily", "30 2 * * *"), now=start)
        await schedules.create(conn, cron("daily6", "0 30 2 * * *"), now=start)
        await schedules.create(conn, cron("hourly", "0 * * * *"), now=start)
    await run_clock(ticker(database), database, until)
    async with database.acquire() as conn:
        for name in ("daily", "daily6"):
            got = [t.astimezone(BERLIN).isoformat() for t in await ticks_of(conn, name)]
            assert got == daily, name
        hourly = await ticks_of(conn, "hourly")
    assert [
        t.astimezone(BERLIN).isoformat()
        for t in hourly
        if t.astimezone(BERLIN).date() == daily_date(daily) and t.astimezone(BERLIN).hour == 2
    ] == hourly_02
    steps = {b - a for a, b in itertools.pairwise(hourly)}
    assert steps == {dt.timedelta(hours=1)}  # real hours, one task each


def daily_date(daily: list[str]) -> dt.date:
    return dt.datetime.fromisoformat(daily[0]).date()


# -- policies ------------------------------------------------------------------------------


async def test_missed_ticks_skip_or_catch_up_after_an_outage(database: Database) -> None:
    async with database.acquire() as conn:
        await schedules.create(conn, every("skipper", "10s"), now=T0)
        await schedules.create(
            conn, every("catcher", "10s", missed="catch_up", catch_up_max=5), now=T0
        )
    t = ticker(database, grace_s=2.0)
    await t.tick_once(now=T0 + dt.timedelta(seconds=10.1))
    # Every dispatcher is down for ~2 minutes.
    done = await t.tick_once(now=T0 + dt.timedelta(seconds=130.5))
    async with database.acquire() as conn:
        assert await ticks_of(conn, "skipper") == seconds([10, 130])
        assert await ticks_of(conn, "catcher") == seconds([10, 80, 90, 100, 110, 120, 130])
        for name in ("skipper", "catcher"):
            row = await schedules.get(conn, name)
            assert row["next_fire_at"] == T0 + dt.timedelta(seconds=140)
    assert done.late == 5
    assert done.skipped == 11 + 6  # skipper: 20..120; catcher: 20..70
    samples = {
        s.name: s.value
        for family in t.metrics.ticks_skipped.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {"taskflow_schedule_ticks_skipped_total": 17.0}


async def test_paused_schedules_do_not_fire_and_resume_by_their_policy(
    database: Database,
) -> None:
    async with database.acquire() as conn:
        await schedules.create(
            conn, every("p", "10s", paused=True, missed="catch_up", catch_up_max=2), now=T0
        )
    t = ticker(database)
    assert (await t.tick_once(now=T0 + dt.timedelta(seconds=60))).locked == 0
    async with database.acquire() as conn, conn.transaction():
        spec = schedules.spec_of(await schedules.lock(conn, "p"))
        await schedules.replace(
            conn,
            ScheduleSpec(spec.name, spec.task_type, spec.cadence, policy=spec.policy),
        )
    await t.tick_once(now=T0 + dt.timedelta(seconds=60.5))
    async with database.acquire() as conn:
        assert await ticks_of(conn, "p") == seconds([40, 50, 60])


async def test_overlap_policies(database: Database) -> None:
    async with database.acquire() as conn:
        for policy in ("allow", "skip", "queue"):
            await schedules.create(conn, every(policy, "10s", overlap=policy), now=T0)
    t = ticker(database, grace_s=1.0)
    await t.tick_once(now=T0 + dt.timedelta(seconds=10.1))
    async with database.acquire() as conn:
        for name in ("allow", "skip", "queue"):
            await set_last_run(conn, name, "processing")
    await t.tick_once(now=T0 + dt.timedelta(seconds=20.1))
    await t.tick_once(now=T0 + dt.timedelta(seconds=30.1))
    async with database.acquire() as conn:
        assert await ticks_of(conn, "allow") == seconds([10, 20, 30])
        assert await ticks_of(conn, "skip") == seconds([10])
        assert await ticks_of(conn, "queue") == seconds([10])  # 20 waits
        waiting = await schedule_ticks.next_due(conn)
        assert waiting.waiting
        assert (await schedules.get(conn, "queue"))["next_fire_at"] == T0 + dt.timedelta(seconds=20)
        for name in ("skip", "queue"):
            await set_last_run(conn, name, "completed")
    # The run ended (database clock: now, after every simulated tick): the waiting tick
    # fires at once, late; the ones that passed meanwhile are missed (skip).
    await t.tick_once(now=T0 + dt.timedelta(seconds=45))
    async with database.acquire() as conn:
        assert await ticks_of(conn, "skip") == seconds([10])  # 40 is 5 s old: missed
        assert await ticks_of(conn, "queue") == seconds([10, 20])
        row = await schedules.get(conn, "queue")
        assert row["next_fire_at"] == T0 + dt.timedelta(seconds=50)  # 30 and 40 missed
        assert row["last_run_status"] == "queued"


# -- the loop in real time ------------------------------------------------------------------


async def test_the_loop_creates_each_tick_within_100ms(database: Database) -> None:
    async with database.acquire() as conn:
        await schedules.create(conn, every("fast", "1s"))
    t = ticker(database, poll_s=1.0)
    stop = asyncio.Event()
    loop = asyncio.create_task(t.run(stop))
    await asyncio.sleep(4.5)
    stop.set()
    await asyncio.wait_for(loop, 5)
    async with database.acquire() as conn:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM created_at - scheduled_for)::float8 AS lag "
            "FROM tasks WHERE schedule = 'fast' ORDER BY scheduled_for"
        )
    lags = [r["lag"] for r in rows]
    assert len(lags) >= 3
    assert all(lag >= 0 for lag in lags)
    assert statistics.median(lags) < 0.1, lags


async def test_a_change_wakes_the_loop_through_its_channel(
    database: Database, database_url: str
) -> None:
    t = ticker(database, poll_s=30.0)
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(schedules.CHANNEL, t.notified)
    try:
        stop = asyncio.Event()
        loop = asyncio.create_task(t.run(stop))
        await asyncio.sleep(0.3)  # the loop now sleeps for its 30 s poll
        async with database.acquire() as conn:
            await schedules.create(conn, cron("soon", "* * * * * *", zone="UTC"))
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.wait_for(loop, 5)
    finally:
        await listener.close()
    async with database.acquire() as conn:
        assert len(await ticks_of(conn, "soon")) >= 1
