"""Schedules and retention with real dispatcher processes (issue 15).

Schedules are created through the store (the REST endpoints come with the API wiring);
the dispatchers are real subprocesses on the test's own Postgres and NATS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools

import asyncpg
import pytest

from taskflow_common import db as dbmod
from taskflow_common.cadence import Cadence
from taskflow_common.config import CommonSettings, load
from taskflow_common.store import schedules
from taskflow_common.store.schedules import ScheduleSpec
from taskflow_common.ticks import Policy
from tests.support.procs import ServiceFactory

pytestmark = pytest.mark.e2e


def dispatcher_env(service_env: dict[str, str]) -> dict[str, str]:
    return service_env | {"DISPATCHER_METRICS_PORT": "0", "SCHEDULE_MISFIRE_GRACE": "2s"}


async def connect(url: str) -> asyncpg.Connection:
    return await dbmod.connect(load(CommonSettings, {"DATABASE_URL": url}))


async def ticks(conn: asyncpg.Connection, name: str) -> list[dt.datetime]:
    rows = await conn.fetch(
        "SELECT scheduled_for FROM tasks WHERE schedule = $1 ORDER BY scheduled_for", name
    )
    return [r["scheduled_for"] for r in rows]


def assert_every_second(got: list[dt.datetime]) -> None:
    assert len(got) == len(set(got)), "a tick made two tasks"
    gaps = {b - a for a, b in itertools.pairwise(got)}
    assert gaps == {dt.timedelta(seconds=1)}, f"a tick is missing: {sorted(gaps)}"


@pytest.mark.slow
async def test_two_dispatchers_make_exactly_one_task_per_tick(
    database_url: str, service_env: dict[str, str], services: ServiceFactory
) -> None:
    env = dispatcher_env(service_env)
    await asyncio.gather(services.start("dispatcher", env), services.start("dispatcher", env))
    conn = await connect(database_url)
    try:
        names = [f"every-second-{i}" for i in range(3)]
        for name in names:
            policy = Policy(missed="catch_up", catch_up_max=100)
            await schedules.create(
                conn, ScheduleSpec(name, "demo", Cadence.parse(every="1s"), policy=policy)
            )
        await asyncio.sleep(60)
        for name in names:
            got = await ticks(conn, name)
            assert len(got) >= 55, (name, len(got))
            assert_every_second(got)
        published = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE schedule IS NOT NULL AND dispatch_pending "
            "AND created_at < now() - interval '2 seconds'"
        )
        assert published == 0  # the outbox published every tick's task
    finally:
        await conn.close()


async def test_a_killed_dispatcher_loses_no_tick_under_catch_up(
    database_url: str, service_env: dict[str, str], services: ServiceFactory
) -> None:
    env = dispatcher_env(service_env)
    first = await services.start("dispatcher", env)
    conn = await connect(database_url)
    try:
        policy = Policy(missed="catch_up", catch_up_max=100)
        await schedules.create(
            conn, ScheduleSpec("catch", "demo", Cadence.parse(every="1s"), policy=policy)
        )
        await schedules.create(conn, ScheduleSpec("skip", "demo", Cadence.parse(every="1s")))
        await asyncio.sleep(4)
        first.kill()  # SIGKILL, mid-run
        await first.wait()
        await asyncio.sleep(5)  # nobody fires for a while
        await services.start("dispatcher", env)
        await asyncio.sleep(4)
        caught = await ticks(conn, "catch")
        assert_every_second(caught)
        assert len(caught) >= 11
        skipped = await ticks(conn, "skip")
        assert len(skipped) == len(set(skipped))  # skip loses ticks, never doubles one
        assert len(skipped) < len(caught)
    finally:
        await conn.close()


async def test_a_running_dispatcher_prunes_old_rows(
    database_url: str, service_env: dict[str, str], services: ServiceFactory
) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO tasks (id, type, priority, status, max_attempts, dispatch_pending,
                               finished_at, created_at)
            SELECT gen_random_uuid(), 'demo', 'normal', s, 3, false,
                   now() - make_interval(days => d), now() - make_interval(days => d + 1)
              FROM unnest(ARRAY['completed', 'failed', 'cancelled']) AS s,
                   unnest(ARRAY[1, 20]) AS d, generate_series(1, 100)
            """
        )
        env = dispatcher_env(service_env) | {
            "TASK_RETENTION": "14d",
            "TASK_RETENTION_FAILED": "30d",
            "DISPATCHER_PRUNE_INTERVAL": "1s",
            "DISPATCHER_PRUNE_BATCH": "40",
        }
        await services.start("dispatcher", env)
        for _ in range(100):
            left = await conn.fetchval("SELECT count(*) FROM tasks")
            if left == 400:
                break
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT status, finished_at > now() - interval '2 days' AS recent, count(*) "
            "FROM tasks GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert [(r["status"], r["recent"], r["count"]) for r in rows] == [
            ("cancelled", True, 100),
            ("completed", True, 100),
            ("failed", False, 100),  # TASK_RETENTION_FAILED=30d keeps them
            ("failed", True, 100),
        ]
    finally:
        await conn.close()
