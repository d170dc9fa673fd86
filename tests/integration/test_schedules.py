"""Schedules against a real Postgres: the store, and the dispatcher's tick pass driven directly.

The clock is simulated (``tick_once(now=...)``) wherever time matters, so months of DST
and hours of downtime take milliseconds; one test runs the real loop for latency.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from taskflow_common.cadence import Cadence
from taskflow_common.config import CommonSettings, load
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import ConflictError, NotFoundError
from taskflow_common.spec import TaskSpec
from taskflow_common.store import schedules, submissions
from taskflow_common.store.schedules import ScheduleSpec
from tests.support.schedules import (
    T0,
    cron,
    every,
    seconds,
    ticker,
    ticks_of,
)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_pool(load(CommonSettings, {"DATABASE_URL": database_url})) as pool:
        yield pool


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
