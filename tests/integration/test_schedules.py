"""Schedules against a real Postgres: the store, and the dispatcher's tick pass driven directly.

The clock is simulated (``tick_once(now=...)``) wherever time matters, so months of DST
and hours of downtime take milliseconds; one test runs the real loop for latency.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import statistics
import zoneinfo
from collections.abc import AsyncIterator, Iterable

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from taskflow_common.cadence import Cadence
from taskflow_common.config import CommonSettings, load
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import ConflictError, NotFoundError
from taskflow_common.spec import TaskSpec
from taskflow_common.store import schedule_ticks, schedules, submissions
from taskflow_common.store.schedules import ScheduleSpec
from taskflow_common.ticks import Policy
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics
from taskflow_dispatcher.schedules import ScheduleTicker

UTC = dt.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_pool(load(CommonSettings, {"DATABASE_URL": database_url})) as pool:
        yield pool


def ticker(database: Database, **kwargs: object) -> ScheduleTicker:
    return ScheduleTicker(
        database,
        MaintenanceMetrics(CollectorRegistry()),
        default_max_attempts=3,
        **kwargs,  # type: ignore[arg-type]
    )


def _spec(name: str, cadence: Cadence, kwargs: dict[str, object]) -> ScheduleSpec:
    """A demo schedule; ``missed``/``catch_up_max``/``overlap`` build its Policy."""
    policy = {k: kwargs.pop(k) for k in ("missed", "catch_up_max", "overlap") if k in kwargs}
    if policy:
        kwargs["policy"] = Policy(**policy)  # type: ignore[arg-type]
    return ScheduleSpec(name, "demo", cadence, **kwargs)  # type: ignore[arg-type]


def every(name: str, seconds: str = "1s", **kwargs: object) -> ScheduleSpec:
    return _spec(name, Cadence.parse(every=seconds), kwargs)


def cron(name: str, expr: str, zone: str = "Europe/Berlin", **kwargs: object) -> ScheduleSpec:
    return _spec(name, Cadence.parse(cron=expr, timezone=zone), kwargs)


async def ticks_of(conn: asyncpg.Connection, name: str) -> list[dt.datetime]:
    rows = await conn.fetch(
        "SELECT scheduled_for FROM tasks WHERE schedule = $1 ORDER BY scheduled_for", name
    )
    return [r["scheduled_for"] for r in rows]


def seconds(values: Iterable[int]) -> list[dt.datetime]:
    return [T0 + dt.timedelta(seconds=s) for s in values]


async def set_last_run(conn: asyncpg.Connection, name: str, status: str) -> None:
    """Play the worker: move the schedule's last task to ``status`` (finished now if terminal)."""
    await conn.execute(
        """UPDATE tasks SET status = $2,
                  finished_at = CASE WHEN $2 IN ('completed', 'failed', 'cancelled')
                                     THEN now() END
            WHERE id = (SELECT last_task_id FROM schedules WHERE name = $1)""",
        name,
        status,
    )


# -- the store ---------------------------------------------------------------------------


async def test_create_get_list_replace_delete(database: Database) -> None:
    async with database.acquire() as conn:
        row = await schedules.create(
            conn,
            every("b-every", "30s", payload={"x": 1}, tags={"team": "a"}, priority="high"),
            now=T0,
        )
        assert row["next_fire_at"] == T0 + dt.timedelta(seconds=30)
        await schedules.create(conn, cron("a-cron", "*/5 * * * *"), now=T0)
        shown = schedules.schedule_json(await schedules.get(conn, "b-every"))
        assert shown["task"] == {
            "type": "demo",
            "payload": {"x": 1},
            "priority": "high",
            "tags": {"team": "a"},
            "max_attempts": None,
            "timeout_s": None,
        }
        assert (shown["every"], shown["cron"], shown["timezone"]) == ("30s", None, None)
        assert shown["next_fire_at"] == "2026-05-01T12:00:30.000000Z"
        assert shown["last_run_status"] is None

        first = await schedules.list_schedules(conn, limit=1)
        assert [r["name"] for r in first.rows] == ["a-cron"]
        assert first.next_cursor is not None
        rest = await schedules.list_schedules(conn, limit=1, cursor=first.next_cursor)
        assert [r["name"] for r in rest.rows] == ["b-every"]
        assert rest.next_cursor is None

        async with conn.transaction():
            current = await schedules.lock(conn, "a-cron")
            spec = schedules.spec_of(current)
            changed = ScheduleSpec(
                spec.name, spec.task_type, Cadence.parse(every="1m"), paused=True
            )
            new = await schedules.replace(
                conn, changed, next_fire_at=changed.cadence.first_tick(T0)
            )
        assert (new["every_s"], new["cron"], new["paused"], new["version"]) == (60.0, None, True, 2)
        assert [r["name"] for r in (await schedules.list_schedules(conn, paused=True)).rows] == [
            "a-cron"
        ]
        await schedules.delete(conn, "a-cron")
        with pytest.raises(NotFoundError):
            await schedules.get(conn, "a-cron")
        with pytest.raises(NotFoundError):
            await schedules.delete(conn, "a-cron")


async def test_a_reused_name_is_refused_and_changes_nothing(database: Database) -> None:
    async with database.acquire() as conn:
        await schedules.create(conn, every("nightly", "1h"), now=T0)
        with pytest.raises(ConflictError) as info:
            await schedules.create(conn, cron("nightly", "0 3 * * *"), now=T0)
        assert info.value.code == schedules.SCHEDULE_EXISTS
        row = await schedules.get(conn, "nightly")
        assert (row["every_s"], row["cron"], row["version"]) == (3600.0, None, 1)
        assert await conn.fetchval("SELECT count(*) FROM schedules") == 1


async def test_a_tick_makes_the_same_task_row_as_a_submit(database: Database) -> None:
    spec = every("report", "1s", payload={"k": [1, 2]}, tags={"t": "v"}, timeout_s=7.5)
    async with database.acquire() as conn:
        await schedules.create(conn, spec, now=T0)
        submitted, _ = await submissions.submit(
            conn, TaskSpec("demo", {"k": [1, 2]}, tags={"t": "v"}, timeout_s=7.5)
        )
    tracer = TracerProvider().get_tracer("test")
    done = await ticker(database, tracer=tracer).tick_once(now=T0 + dt.timedelta(seconds=1.2))
    assert (done.locked, done.fired) == (1, 1)
    async with database.acquire() as conn:
        columns = [
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'tasks'::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        ticked = await conn.fetchrow("SELECT * FROM tasks WHERE schedule = 'report'")
        plain = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", submitted["id"])
    differ = {"id", "trace_parent", "created_at", "updated_at", "run_at", "schedule"}
    differ |= {"scheduled_for"}
    for column in columns:
        if column not in differ:
            assert ticked[column] == plain[column], column
    assert ticked["status"] == "queued"
    assert ticked["dispatch_pending"]
    assert ticked["scheduled_for"] == T0 + dt.timedelta(seconds=1)
    assert ticked["trace_parent"] is not None
    assert ticked["max_attempts"] == 3  # the dispatcher's WORKER_MAX_ATTEMPTS
    async with database.acquire() as conn:
        row = await schedules.get(conn, "report")
    assert row["last_task_id"] == ticked["id"]
    assert row["last_fire_at"] == ticked["scheduled_for"]
    assert row["next_fire_at"] == T0 + dt.timedelta(seconds=2)
    assert row["last_run_status"] == "queued"


async def test_run_now_fires_at_once_and_leaves_the_next_tick(database: Database) -> None:
    async with database.acquire() as conn:
        await schedules.create(conn, every("later", "1h", paused=True), now=T0)
        task = await schedules.run_now(conn, "later", default_max_attempts=4)
        assert (task["schedule"], task["status"], task["max_attempts"]) == ("later", "queued", 4)
        row = await schedules.get(conn, "later")
        assert row["last_task_id"] == task["id"]
        assert row["next_fire_at"] == T0 + dt.timedelta(hours=1)
        second = await schedules.run_now(conn, "later", default_max_attempts=4)
        assert second["scheduled_for"] > task["scheduled_for"]
        with pytest.raises(NotFoundError):
            await schedules.run_now(conn, "nope", default_max_attempts=4)


# -- exactly once --------------------------------------------------------------------------


async def test_two_tickers_racing_make_exactly_one_task_per_tick(database_url: str) -> None:
    settings = load(CommonSettings, {"DATABASE_URL": database_url})
    names = [f"s{i:02d}" for i in range(20)]
    async with open_pool(settings) as one, open_pool(settings) as two:
        async with one.acquire() as conn:
            for name in names:
                await schedules.create(conn, every(name, "1s", missed="catch_up"), now=T0)
        a, b = ticker(one, batch=7), ticker(two, batch=7)
        for step in range(1, 61):
            now = T0 + dt.timedelta(seconds=step, milliseconds=300)
            # Several passes each, interleaved: small batches make them meet on rows.
            await asyncio.gather(*(t.tick_once(now=now) for t in (a, b, a, b, a, b)))
        async with one.acquire() as conn:
            for name in names:
                assert await ticks_of(conn, name) == seconds(range(1, 61)), name
            assert await conn.fetchval("SELECT count(*) FROM tasks") == 20 * 60


async def test_a_replayed_tick_makes_no_second_task(database: Database) -> None:
    t = ticker(database)
    async with database.acquire() as conn:
        await schedules.create(conn, every("replay", "1s"), now=T0)
    await t.tick_once(now=T0 + dt.timedelta(seconds=3.5))
    async with database.acquire() as conn:
        assert await ticks_of(conn, "replay") == seconds([1, 2, 3])
        # A crash after insert and before the advance is committed cannot happen (one
        # transaction), but a stale next_fire_at (restored backup, manual fix) can.
        await conn.execute("UPDATE schedules SET next_fire_at = $1", T0 + dt.timedelta(seconds=1))
    done = await t.tick_once(now=T0 + dt.timedelta(seconds=4.5))
    assert (done.fired, done.replayed) == (1, 3)
    async with database.acquire() as conn:
        assert await ticks_of(conn, "replay") == seconds([1, 2, 3, 4])


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
