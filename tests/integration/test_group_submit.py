"""Group commit of single submits and the task events it leads to, against a real Postgres.

:class:`~taskflow_ingest_api.submitter.GroupSubmitter` (concurrent single POSTs share one
INSERT), and what migrations 0002-0004 notify on ``taskflow_task_events``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskflow_common.config import CommonSettings, load
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import UnavailableError
from taskflow_common.spec import TaskSpec
from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from taskflow_common.store import events as task_events
from taskflow_ingest_api.submitter import GroupSubmitter
from tests.support.timing import floor_plus


def _parent(i: int) -> str:
    return f"00-{i + 1:032x}-{i + 1:016x}-01"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_pool(load(CommonSettings, {"DATABASE_URL": database_url})) as pool:
        yield pool


async def test_concurrent_submits_share_one_statement_and_keep_their_own_rows(
    database: Database,
) -> None:
    submitter = GroupSubmitter(lambda: database, max_bytes=1 << 20)
    specs = [TaskSpec(type="demo", payload={"i": i}, priority="high") for i in range(20)]
    results = await asyncio.gather(
        *(submitter.submit(s, _parent(i), 10) for i, s in enumerate(specs))
    )
    # All 20 queued before the first statement went out: one statement for all.
    assert submitter.groups == 1
    assert [size for _, size in results] == [20] * 20
    async with database.acquire() as conn:
        for i, (row, _) in enumerate(results):
            stored = await conn.fetchrow(
                "SELECT payload, trace_parent, status FROM tasks WHERE id = $1", row["id"]
            )
            assert stored is not None
            assert (stored["payload"], stored["trace_parent"], stored["status"]) == (
                {"i": i},
                _parent(i),
                "queued",
            )
            assert row["payload"] == {"i": i}


async def test_groups_are_bounded_by_bytes_and_rows(database: Database) -> None:
    submitter = GroupSubmitter(lambda: database, max_bytes=100, max_rows=3)
    results = await asyncio.gather(
        *(submitter.submit(TaskSpec(type="demo"), None, 40) for _ in range(7))
    )
    # 40-byte bodies, at most 100 bytes (2 bodies) per statement.
    assert [size for _, size in results] == [2, 2, 2, 2, 2, 2, 1]
    assert submitter.groups == 4
    assert len({row["id"] for row, _ in results}) == 7


async def test_a_bad_request_fails_alone(database: Database) -> None:
    submitter = GroupSubmitter(lambda: database, max_bytes=1 << 20)
    # The API validates types; this one bypasses validation and breaks the CHECK.
    specs = [TaskSpec(type="demo", payload={"i": i}) for i in range(5)]
    specs.insert(2, TaskSpec(type="not a valid type!"))
    results = await asyncio.gather(
        *(submitter.submit(s, None) for s in specs), return_exceptions=True
    )
    assert isinstance(results[2], asyncpg.CheckViolationError)
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, tuple) for r in good), good
    async with database.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[])",
            [r[0]["id"] for r in good if isinstance(r, tuple)],
        )
        assert stored == 5
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 5


async def test_an_outage_fails_the_group_at_once_as_unavailable() -> None:
    settings = load(
        CommonSettings,
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none", "DB_ACQUIRE_TIMEOUT": "300ms"},
    )
    async with open_pool(settings, min_size=0) as down:
        submitter = GroupSubmitter(lambda: down, max_bytes=1 << 20)
        started = time.monotonic()
        results = await asyncio.gather(
            *(submitter.submit(TaskSpec(type="demo"), None) for _ in range(10)),
            return_exceptions=True,
        )
        assert time.monotonic() - started < floor_plus(0.3, 1.2)  # the acquire timeout
    assert all(isinstance(r, UnavailableError) for r in results), results
    assert len({id(r) for r in results}) == 10, "each request gets its own exception"


async def test_keyed_submits_are_refused() -> None:
    submitter = GroupSubmitter(lambda: pytest.fail("no database needed"), max_bytes=1)
    with pytest.raises(ValueError, match="keyed"):
        await submitter.submit(TaskSpec(type="demo", idempotency_key="k"), None)


# -- task events ------------------------------------------------------------------------------


async def test_a_claim_and_a_success_notify_one_task_event_each(
    database: Database, database_url: str
) -> None:
    """Migrations 0003/0004: every task status change notifies; the execution's insert and
    its success (same statements) send nothing of their own; a failure does."""
    submitter = GroupSubmitter(lambda: database, max_bytes=1 << 20)
    (ok, _), (bad, _) = await asyncio.gather(
        submitter.submit(TaskSpec(type="demo"), None),
        submitter.submit(TaskSpec(type="demo", max_attempts=1), None),
    )
    got: asyncio.Queue[str] = asyncio.Queue()
    listen = await asyncpg.connect(database_url)
    try:
        await listen.add_listener(
            task_events.CHANNEL, lambda _c, _p, _ch, payload: got.put_nowait(payload)
        )
        async with database.acquire() as conn:
            for row in (ok, bad):
                claim = await claim_store.claim(conn, row["id"], 1, "w", 30.0)
                assert isinstance(claim, claim_store.Claim)
            assert await attempts.succeed(conn, ok["id"], 1, "null")
            failed = await attempts.fail(
                conn, bad["id"], 1, error="boom", error_type="E", permanent=True, backoff_s=0
            )
            assert failed is not None
            assert failed.status == "failed"
        received = [await asyncio.wait_for(got.get(), 10) for _ in range(5)]
        # Notifications arrive in commit order; one more would have arrived by now.
        await listen.execute("SELECT pg_notify($1, 'end')", task_events.CHANNEL)
        assert await asyncio.wait_for(got.get(), 10) == "end"
    finally:
        await listen.close()
    assert sorted(received) == sorted(
        [
            f"task:{ok['id']}:processing:2",
            f"task:{bad['id']}:processing:2",
            f"task:{ok['id']}:completed:3",
            f"execution:{bad['id']}:1:failed",
            f"task:{bad['id']}:failed:3",
        ]
    )
