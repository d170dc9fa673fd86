"""Lease renewal against a real Postgres, racing the batched success write for row locks.

A worker renews its running attempts' leases and records a batch of successes on two
connections at once. If the renewal locks executions E1 then E2 while the batch holds E2
and then wants E1, Postgres aborts one of them as a deadlock (review of issue 11, item 2):
a renewal must never wait for a row a completion holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from tests.support.waiting import wait_for

LOCK = "SELECT 1 FROM task_executions WHERE id = $1 FOR UPDATE"


async def _claimed(db: asyncpg.Connection) -> uuid.UUID:
    """The execution id of a new task's first attempt, claimed with a 30 s lease."""
    task_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO tasks (id, type, priority, status, max_attempts) "
        "VALUES ($1, 'demo', 'normal', 'queued', 3)",
        task_id,
    )
    claims = await claim_store.claim_many(db, [(task_id, 1)], "w1", 30.0)
    return claims[task_id].execution_id


async def _two_executions(db: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    """Two started executions, the first both lower in id and earlier on disk.

    Whatever plan the renewal gets (an index scan in id order or a sequential one in
    physical order), it reaches the first one first.
    """
    for _ in range(50):
        first, second = await _claimed(db), await _claimed(db)
        if first < second:
            return first, second
    raise AssertionError("no two executions in id order out of 50 pairs")


async def _lease_left_s(db: asyncpg.Connection, execution_id: uuid.UUID) -> float:
    left = await db.fetchval(
        "SELECT lease_expires_at - clock_timestamp() FROM task_executions WHERE id = $1",
        execution_id,
    )
    return float(left.total_seconds())


@pytest.fixture
async def conns(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """Two more connections: one plays the completion batch, one the heartbeat."""
    batch = await asyncpg.connect(database_url)
    beat = await asyncpg.connect(database_url)
    try:
        yield batch, beat
    finally:
        await batch.close()
        await beat.close()


async def test_a_renewal_never_deadlocks_with_a_completion_holding_its_rows(
    db: asyncpg.Connection, conns: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    e1, e2 = await _two_executions(db)
    batch, beat = conns
    await batch.execute("SET lock_timeout = '10s'")  # a hang fails, never blocks the suite
    tx = batch.transaction()
    await tx.start()
    await batch.execute(LOCK, e2)  # the completion batch has locked E2 first
    renewal = asyncio.ensure_future(attempts.renew_leases(beat, [e1, e2], 60.0))

    async def renewal_done_or_waiting() -> bool:
        waiting = await db.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
            beat.get_server_pid(),
        )
        return renewal.done() or bool(waiting)

    await wait_for(renewal_done_or_waiting, 10, what="the renewal ran into E2's lock or ended")
    try:
        await batch.execute(LOCK, e1)  # ... and now wants E1
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    finally:
        await asyncio.wait({renewal}, timeout=10)
    assert renewal.done()
    renewal.result()  # no DeadlockDetectedError on the heartbeat's side either
    # E1, which nobody else held, was renewed this beat.
    assert await _lease_left_s(db, e1) > 45


async def test_a_completion_batch_locks_its_executions_in_id_order(
    db: asyncpg.Connection, conns: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    # The other side: whatever join the planner picks, the batch takes E1 before E2, so
    # a transaction holding E1 and then taking E2 (the same order) never deadlocks it.
    e1, e2 = await _two_executions(db)
    rows = await db.fetch(
        "SELECT task_id, attempt FROM task_executions WHERE id = ANY($1::uuid[])", [e1, e2]
    )
    other, batch = conns
    await other.execute("SET lock_timeout = '10s'")
    tx = other.transaction()
    await tx.start()
    await other.execute(LOCK, e1)
    recording = asyncio.ensure_future(
        attempts.succeed_many(batch, [(r["task_id"], r["attempt"], "1") for r in rows])
    )

    async def waiting() -> bool:
        return bool(
            await db.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                batch.get_server_pid(),
            )
        )

    await wait_for(waiting, 10, what="the batch waits for E1")
    try:
        await other.execute(LOCK, e2)
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    finally:
        await asyncio.wait({recording}, timeout=10)
    assert recording.result() == {(r["task_id"], r["attempt"]) for r in rows}
