"""The worker's cancel statement against a real Postgres: fenced by the task's state."""

from __future__ import annotations

import uuid

import asyncpg

from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store


async def test_a_worker_cancel_closes_only_an_attempt_of_a_cancelled_task(
    db: asyncpg.Connection,
) -> None:
    """Issue 11 item 8: ``mark_cancelled`` on a task nobody cancelled changes nothing."""
    task_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO tasks (id, type, priority, status, max_attempts) "
        "VALUES ($1, 'demo', 'normal', 'queued', 3)",
        task_id,
    )
    claim = await claim_store.claim(db, task_id, 1, "w1", 30.0)
    assert isinstance(claim, claim_store.Claim)
    # A late cancel for this attempt, while the task is processing (e.g. retried since).
    assert not await attempts.mark_cancelled(db, task_id, 1, "cancelled by request")
    status = await db.fetchval("SELECT status FROM task_executions WHERE task_id = $1", task_id)
    assert status == "started"
    # Cancelled through the API: the worker's statement closes the attempt.
    await db.execute("UPDATE tasks SET status = 'cancelled' WHERE id = $1", task_id)
    assert await attempts.mark_cancelled(db, task_id, 1, "cancelled by request")
    status = await db.fetchval("SELECT status FROM task_executions WHERE task_id = $1", task_id)
    assert status == "cancelled"
