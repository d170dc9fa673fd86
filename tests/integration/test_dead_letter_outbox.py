"""The dead letter's outbox against a real Postgres (migration 0007).

A dead letter stays pending after its PubAck and until the dlq-monitor records it; the
dispatcher's check re-arms it when the dead-letter stream no longer holds it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskflow_common.messages import DeadLetter
from taskflow_common.store import deadletters, outbox
from tests.conftest import REPO
from tests.integration.test_deadletters_store import connect, insert_task
from tests.support.waiting import wait_for

RECONCILE = "-- Reconcile what earlier versions lost"


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def to_publish(conn: asyncpg.Connection) -> set[uuid.UUID]:
    async with conn.transaction():
        return {d.task_id for d in await outbox.lock_dead(conn, 100)}


async def pending(conn: asyncpg.Connection, task_id: uuid.UUID) -> bool:
    value = await conn.fetchval("SELECT dead_letter_pending FROM tasks WHERE id = $1", task_id)
    assert isinstance(value, bool)
    return value


def letter(task_id: uuid.UUID, attempts: int = 3) -> DeadLetter:
    return DeadLetter(reason="failed", task_id=task_id, attempts=attempts, error="boom")


async def test_a_published_dead_letter_stays_pending_until_it_is_recorded(
    conn: asyncpg.Connection,
) -> None:
    task_id = await insert_task(conn, dead_letter_pending=True)
    assert await to_publish(conn) == {task_id}
    await outbox.mark_dead_published(conn, [(task_id, 7)], "stream-1")
    assert await to_publish(conn) == set()  # on the bus: not published again
    assert await pending(conn, task_id)

    # A dead letter of an older failure (other attempts) does not settle this one.
    assert await deadletters.record(conn, f"dlq:{task_id}:2", letter(task_id, 2))
    assert await pending(conn, task_id)
    assert await deadletters.record(conn, f"dlq:{task_id}:3", letter(task_id))
    assert not await pending(conn, task_id)
    row = await conn.fetchrow(
        "SELECT dead_letter_seq, dead_letter_stream FROM tasks WHERE id = $1", task_id
    )
    assert row is not None
    assert tuple(row) == (None, None)


async def test_dead_letters_the_stream_lost_are_rearmed_and_no_others(
    conn: asyncpg.Connection,
) -> None:
    held = await insert_task(conn, dead_letter_pending=True)
    aged = await insert_task(conn, dead_letter_pending=True)
    elsewhere = await insert_task(conn, dead_letter_pending=True)
    await outbox.mark_dead_published(conn, [(held, 10), (aged, 4)], "stream-1")
    await outbox.mark_dead_published(conn, [(elsewhere, 12)], "stream-0")

    # The stream now starts at sequence 5 (4 aged out); "elsewhere" went to an old one.
    assert await outbox.rearm_lost_dead_letters(conn, "stream-1", 5) == 2
    assert await to_publish(conn) == {aged, elsewhere}
    assert await outbox.rearm_lost_dead_letters(conn, "stream-1", 5) == 0


async def test_the_migration_rearms_failed_tasks_that_have_no_dead_letter(
    conn: asyncpg.Connection,
) -> None:
    """0007's last statement, run again on rows shaped as the old code left them."""
    lost = await insert_task(conn, dead_letter_pending=False)
    kept = await insert_task(conn, dead_letter_pending=False)
    assert await deadletters.record(conn, f"dlq:{kept}:3", letter(kept))
    migration = (REPO / "migrations" / "0007_dead_letter_reconcile.sql").read_text()
    await conn.execute(migration[migration.index(RECONCILE) :])
    assert await to_publish(conn) == {lost}


async def test_a_dead_letter_of_a_task_that_moved_on_is_recorded_resolved(
    conn: asyncpg.Connection,
) -> None:
    """The retry race's fence: queued again, or failed again on a later attempt."""
    queued = await insert_task(conn, status="queued")
    again = await insert_task(conn, attempts=5, dead_letter_pending=True)
    assert await deadletters.record(conn, f"dlq:{queued}:3", letter(queued))
    assert await deadletters.record(conn, f"dlq:{again}:3", letter(again))
    rows = await conn.fetch("SELECT task_id, status, resolved_at FROM dead_letters")
    assert {(r["task_id"], r["status"]) for r in rows} == {
        (queued, "replayed"),
        (again, "replayed"),
    }
    assert all(r["resolved_at"] is not None for r in rows)
    assert await pending(conn, again)  # attempt 5's dead letter is still to come


async def test_a_replay_waiting_on_a_record_resolves_the_new_dead_letter(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """A record holds the task row (not yet committed) while a replay waits for it."""
    task_id = await insert_task(conn, dead_letter_pending=True)
    other = await connect(database_url)
    try:
        async with conn.transaction():
            assert await deadletters.record(conn, f"dlq:{task_id}:3", letter(task_id))
            replaying = asyncio.create_task(deadletters.replay(other, task_id))

            async def waiting() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return bool(n)

            await wait_for(waiting, 5, what="the replay to wait for the task row")
        row = await asyncio.wait_for(replaying, 5)
    finally:
        await other.close()
    assert row["status"] == "queued"
    assert row["dead_letters_replayed"] == 1
    assert await conn.fetchval("SELECT status FROM dead_letters") == "replayed"
