"""Transactional enqueue (issue 6): the task exists, and runs, iff the caller commits.

The caller's connections here are plain ``asyncpg.connect`` connections (asyncpg's
default text codec for jsonb) unless a test installs its own JSON codec, as an
application would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskflow_client import Conflict, ValidationFailed
from taskflow_client.enqueue import enqueue
from tests.support.procs import ServiceFactory
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(service_env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    s = await Stack(services, service_env).start(dlq=False)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def conn(db: asyncpg.Connection) -> asyncpg.Connection:
    """The application's own connection, in whose transactions tasks are enqueued."""
    return db


async def test_rolled_back_enqueue_leaves_no_task_and_nothing_runs(
    stack: Stack, conn: asyncpg.Connection
) -> None:
    tx = conn.transaction()
    await tx.start()
    rolled = await enqueue(conn, "demo", {"fate": "rolled back"})
    assert rolled.status == "queued"
    await tx.rollback()
    assert await stack.db_value("SELECT count(*) FROM tasks WHERE id = $1", rolled.id) == 0

    async with conn.transaction():
        committed = await enqueue(conn, "demo", {"fate": "committed"})
    done = await stack.wait_status(str(committed.id), timeout=30)
    assert done["status"] == "completed"
    assert done["result"] == {"fate": "committed"}

    # The committed task went through dispatcher and worker; the rolled-back one, had
    # anything published it, would have been handled by the same pipeline by now.
    assert await stack.db_value("SELECT count(*) FROM tasks WHERE id = $1", rolled.id) == 0
    assert (
        await stack.db_value("SELECT count(*) FROM task_executions WHERE task_id = $1", rolled.id)
        == 0
    )
    assert await stack.db_value("SELECT count(*) FROM tasks") == 1
    # The caller's connection keeps asyncpg's default codec: jsonb still comes back as text.
    assert await conn.fetchval("SELECT '{\"a\": 1}'::jsonb") == '{"a": 1}'


async def test_a_task_enqueued_in_an_open_transaction_runs_only_after_commit(
    stack: Stack, conn: asyncpg.Connection
) -> None:
    tx = conn.transaction()
    await tx.start()
    pending = await enqueue(conn, "demo", {"fate": "committed later"}, priority="high")
    try:
        # The pipeline is busy meanwhile: a task submitted over REST completes...
        other = await stack.submit("demo", {"other": True})
        await stack.wait_status(other["id"], timeout=30)
        # ...while the uncommitted one is invisible and has not run.
        assert await stack.db_value("SELECT count(*) FROM tasks WHERE id = $1", pending.id) == 0
        assert (
            await stack.db_value(
                "SELECT count(*) FROM task_executions WHERE task_id = $1", pending.id
            )
            == 0
        )
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    done = await stack.wait_status(str(pending.id), timeout=30)
    assert done["status"] == "completed"
    assert done["result"] == {"fate": "committed later"}
    assert done["priority"] == "high"


async def test_enqueue_uses_the_callers_json_codec_and_leaves_it(
    stack: Stack, conn: asyncpg.Connection
) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE orders (id int, doc jsonb)")
        await conn.execute("INSERT INTO orders VALUES (1, $1)", {"total": 5})
        task = await enqueue(conn, "demo", ["a", 1, None, {"b": 2.5}])
    assert await conn.fetchval("SELECT doc FROM orders") == {"total": 5}
    done = await stack.wait_status(str(task.id), timeout=30)
    assert done["result"] == ["a", 1, None, {"b": 2.5}]


async def test_enqueue_options_and_idempotency(conn: asyncpg.Connection) -> None:
    before = dt.datetime.now(dt.UTC)
    async with conn.transaction():
        task = await enqueue(
            conn,
            "demo",
            None,
            max_attempts=5,
            delay_ms=30_000,
            timeout_s=2.5,
            tags={"tenant": "acme"},
            idempotency_key="order-42",
        )
    assert task.payload == {}
    assert task.max_attempts == 5
    assert task.timeout_s == 2.5
    assert task.tags == {"tenant": "acme"}
    assert task.run_at is not None
    assert task.run_at >= before + dt.timedelta(seconds=29)

    async with conn.transaction():
        again = await enqueue(
            conn,
            "demo",
            None,
            max_attempts=5,
            delay_ms=30_000,
            timeout_s=2.5,
            tags={"tenant": "acme"},
            idempotency_key="order-42",
        )
    assert again.id == task.id

    async with conn.transaction():
        with pytest.raises(Conflict) as info:
            await enqueue(conn, "demo", {"other": 1}, idempotency_key="order-42")
        assert info.value.code == "idempotency_key_reused"
        # Raised before any failing SQL: the caller's transaction is still usable.
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 1

    at = dt.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    async with conn.transaction():
        scheduled = await enqueue(conn, "demo", {}, run_at=at)
    assert scheduled.run_at == at


async def test_enqueue_rejects_bad_input_before_any_sql(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        with pytest.raises(ValidationFailed) as info:
            await enqueue(
                conn,
                "not a type!",
                {"n": 2**70, "s": "nul\x00"},
                priority="urgent",  # type: ignore[arg-type]
                max_attempts=0,
                run_at=dt.datetime(2030, 1, 1),  # noqa: DTZ001 - naive on purpose
                delay_ms=-1,
                timeout_s=0,
                tags={"k": 1},  # type: ignore[dict-item]
                idempotency_key="",
            )
        fields = [e.field for e in info.value.errors]
        assert fields == [
            "type",
            "payload.n",
            "payload.s",
            "priority",
            "max_attempts",
            "run_at",
            "delay_ms",
            "timeout_s",
            "tags",
            "idempotency_key",
        ]
        assert isinstance(info.value, ValueError)
        assert info.value.code == "validation_error"
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
    with pytest.raises(ValidationFailed) as nan:
        await enqueue(conn, "demo", {"x": float("nan")})
    assert [e.field for e in nan.value.errors] == ["payload.x"]
    at = dt.datetime.now(dt.UTC)
    with pytest.raises(ValidationFailed) as both:
        await enqueue(conn, "demo", {}, run_at=at, delay_ms=5, tags={"a:b": "c"})
    assert [e.field for e in both.value.errors] == ["delay_ms", "tags"]
