"""The worker's batch statements against a real Postgres: one claim and one completion
for many deliveries, fenced row by row exactly as the single-row statements are."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store


async def _new_task(db: asyncpg.Connection, status: str = "queued") -> uuid.UUID:
    """A due task whose first dispatch is not recorded yet (dispatch 1 may claim it)."""
    task_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO tasks (id, type, priority, status, max_attempts) "
        "VALUES ($1, 'demo', 'normal', $2, 3)",
        task_id,
        status,
    )
    return task_id


async def _statuses(db: asyncpg.Connection, task_id: uuid.UUID) -> tuple[str, list[str]]:
    task = await db.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
    rows = await db.fetch(
        "SELECT status FROM task_executions WHERE task_id = $1 ORDER BY attempt", task_id
    )
    return task, [r["status"] for r in rows]


async def test_one_claim_for_many_deliveries_fenced_row_by_row(db: asyncpg.Connection) -> None:
    fresh = [await _new_task(db) for _ in range(3)]
    done = await _new_task(db, status="completed")
    stale = await _new_task(db)
    missing = uuid.uuid4()
    deliveries = [(t, 1) for t in fresh] + [(done, 1), (stale, 7), (missing, 1)]
    claims = await claim_store.claim_many(db, deliveries, "w1", 30.0)
    assert set(claims) == set(fresh)
    for t in fresh:
        c = claims[t]
        assert (c.task_id, c.attempt, c.type, c.priority) == (t, 1, "demo", "normal")
        assert c.queue_wait_s is not None
        assert await _statuses(db, t) == ("processing", ["started"])
        lease = await db.fetchval(
            "SELECT lease_expires_at - clock_timestamp() FROM task_executions WHERE id = $1",
            c.execution_id,
        )
        assert 25 < lease.total_seconds() <= 30
    # The refused ones were left alone and say why, as a single claim would.
    assert await _statuses(db, done) == ("completed", [])
    assert await _statuses(db, stale) == ("queued", [])
    assert await claim_store.diagnose(db, done) == claim_store.Refusal("already_done")
    assert await claim_store.diagnose(db, stale) == claim_store.Refusal("stale")
    assert await claim_store.diagnose(db, missing) == claim_store.Refusal("unknown_task")
    # A second delivery of the same dispatch claims nothing: the attempt is owned.
    assert await claim_store.claim_many(db, [(t, 1) for t in fresh], "w2", 30.0) == {}
    refusal = await claim_store.diagnose(db, fresh[0])
    assert (refusal.verdict, refusal.attempt, refusal.worker_id) == ("owned_elsewhere", 1, "w1")


async def test_a_batch_of_one_is_the_single_claim(db: asyncpg.Connection) -> None:
    task = await _new_task(db)
    claims = await claim_store.claim_many(db, [(task, 1)], "w1", 30.0)
    assert list(claims) == [task]
    assert await claim_store.claim_many(db, [(task, 1)], "w1", 30.0) == {}


async def test_one_completion_for_many_attempts_fenced_row_by_row(db: asyncpg.Connection) -> None:
    tasks = [await _new_task(db) for _ in range(4)]
    claims = await claim_store.claim_many(db, [(t, 1) for t in tasks], "w1", 30.0)
    # Fenced: one attempt was cancelled meanwhile, one is given a wrong attempt number.
    await db.execute("UPDATE tasks SET status = 'cancelled' WHERE id = $1", tasks[2])
    assert await attempts.mark_cancelled(db, tasks[2], 1, "cancelled by request")
    rows = [
        (tasks[0], 1, '{"r": 0}'),
        (tasks[1], 1, "[1, 2]"),
        (tasks[2], 1, "null"),
        (tasks[3], 2, "3"),
    ]
    recorded = await attempts.succeed_many(db, rows)
    assert recorded == {(tasks[0], 1), (tasks[1], 1)}
    assert await _statuses(db, tasks[0]) == ("completed", ["succeeded"])
    assert await db.fetchval("SELECT result FROM tasks WHERE id = $1", tasks[0]) == '{"r": 0}'
    assert await db.fetchval("SELECT result FROM tasks WHERE id = $1", tasks[1]) == "[1, 2]"
    assert await _statuses(db, tasks[3]) == ("processing", ["started"])
    # Recording again changes nothing: never completes twice.
    assert await attempts.succeed_many(db, rows[:2]) == set()
    assert claims[tasks[3]].attempt == 1
    # The same task with two attempts (a lost one still finishing): only the current
    # attempt is recorded.
    assert await attempts.succeed_many(db, [(tasks[3], 0, "0"), (tasks[3], 1, "1")]) == {
        (tasks[3], 1)
    }
    assert await _statuses(db, tasks[3]) == ("completed", ["succeeded"])


async def test_a_refused_result_refuses_the_whole_statement(db: asyncpg.Connection) -> None:
    tasks = [await _new_task(db) for _ in range(2)]
    await claim_store.claim_many(db, [(t, 1) for t in tasks], "w1", 30.0)
    with pytest.raises(asyncpg.DataError):
        await attempts.succeed_many(db, [(tasks[0], 1, '"ok"'), (tasks[1], 1, '"\\u0000"')])
    # Nothing was written: the caller falls back to one statement per row.
    for t in tasks:
        assert await _statuses(db, t) == ("processing", ["started"])
    assert await attempts.succeed(db, tasks[0], 1, '"ok"')
