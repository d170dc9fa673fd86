"""Retention against a real Postgres: what is pruned, what is kept, batches, and SIGKILL.

Rows are made old by writing ``finished_at`` / ``resolved_at`` in the past directly (the
database clock decides what is old, so nothing waits).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from taskflow_common.config import CommonSettings, load
from taskflow_common.db import Database, open_pool
from taskflow_common.store import retention
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics
from taskflow_dispatcher.pruner import Pruner, RetentionPolicy
from tests.support.waiting import wait_for

DAY = 86400.0


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_pool(load(CommonSettings, {"DATABASE_URL": database_url})) as pool:
        yield pool


async def make_tasks(
    conn: asyncpg.Connection,
    count: int,
    *,
    status: str,
    age_days: float,
    attempts: int = 2,
    dead_letter: str | None = None,
    dead_letter_pending: bool = False,
) -> list[uuid.UUID]:
    """Insert ``count`` tasks in ``status`` that finished ``age_days`` ago, each with
    ``attempts`` executions (and a dead letter in status ``dead_letter`` if given)."""
    terminal = status in retention.PRUNABLE_STATUSES
    rows = await conn.fetch(
        """
        INSERT INTO tasks (id, type, priority, status, attempts, failed_attempts, max_attempts,
                           dispatch_pending, dispatch_seq, dead_letter_pending, finished_at,
                           created_at)
        SELECT gen_random_uuid(), 'demo', 'normal', $2, $3, 0, 3, false, $3, $5,
               CASE WHEN $6 THEN now() - make_interval(secs => $4) END,
               now() - make_interval(secs => $4 + 60)
          FROM generate_series(1, $1)
        RETURNING id
        """,
        count,
        status,
        attempts,
        age_days * DAY,
        dead_letter_pending,
        terminal,
    )
    ids = [r["id"] for r in rows]
    await conn.execute(
        """
        INSERT INTO task_executions (task_id, attempt, status, worker_id, lease_expires_at,
                                     finished_at)
        SELECT t, a, 'failed', 'w1', now(), now()
          FROM unnest($1::uuid[]) AS t, generate_series(1, $2) AS a
        """,
        ids,
        attempts,
    )
    if dead_letter is not None:
        await conn.execute(
            """
            INSERT INTO dead_letters (dedupe_key, task_id, reason, status, failed_at, resolved_at)
            SELECT 'dlq:' || t, t, 'failed', $2, now() - make_interval(secs => $3),
                   CASE WHEN $2 <> 'open' THEN now() - make_interval(secs => $3) END
              FROM unnest($1::uuid[]) AS t
            """,
            ids,
            dead_letter,
            age_days * DAY,
        )
    return ids


async def present(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[])", ids)
    return n


def pruner(database: Database, **kwargs: object) -> Pruner:
    policy = kwargs.pop("policy", RetentionPolicy())
    return Pruner(database, MaintenanceMetrics(CollectorRegistry()), policy, **kwargs)  # type: ignore[arg-type]


async def test_prunes_old_terminal_tasks_with_their_executions_and_keeps_the_rest(
    database: Database,
) -> None:
    async with database.acquire() as conn:
        old = {
            s: await make_tasks(conn, 3, status=s, age_days=20)
            for s in ("completed", "failed", "cancelled")
        }
        recent = await make_tasks(conn, 3, status="completed", age_days=2)
        running = await make_tasks(conn, 2, status="processing", age_days=30)
        queued = await make_tasks(conn, 2, status="queued", age_days=30, attempts=0)
        retrying = await make_tasks(conn, 2, status="retrying", age_days=30)
        open_dl = await make_tasks(conn, 2, status="failed", age_days=40, dead_letter="open")
        pending_dl = await make_tasks(
            conn, 2, status="failed", age_days=40, dead_letter_pending=True
        )
        resolved = await make_tasks(conn, 2, status="failed", age_days=20, dead_letter="discarded")
    done = await pruner(database).prune_once()
    assert (done.tasks, done.executions, done.more) == (11, 22, False)
    async with database.acquire() as conn:
        for ids in old.values():
            assert await present(conn, ids) == 0
        assert await present(conn, resolved) == 0
        for ids in (recent, running, queued, retrying, open_dl, pending_dl):
            assert await present(conn, ids) == len(ids)
        orphans = await conn.fetchval(
            "SELECT count(*) FROM task_executions e WHERE NOT EXISTS "
            "(SELECT 1 FROM tasks t WHERE t.id = e.task_id)"
        )
        assert orphans == 0
        # The resolved dead letters (20 days, under the 30-day DLQ retention) stay, with
        # their task gone.
        kept = await conn.fetch("SELECT task_id, status FROM dead_letters WHERE status <> 'open'")
        assert [(r["task_id"], r["status"]) for r in kept] == [(None, "discarded")] * 2


async def test_per_status_overrides_and_zero_keeps_forever(database: Database) -> None:
    async with database.acquire() as conn:
        completed = await make_tasks(conn, 2, status="completed", age_days=10)
        failed = await make_tasks(conn, 2, status="failed", age_days=10)
        cancelled = await make_tasks(conn, 2, status="cancelled", age_days=400)
    policy = RetentionPolicy(
        tasks_s={"completed": 7 * DAY, "failed": 30 * DAY, "cancelled": 0.0}, dead_letters_s=0.0
    )
    await pruner(database, policy=policy).prune_once()
    async with database.acquire() as conn:
        assert await present(conn, completed) == 0
        assert await present(conn, failed) == 2
        assert await present(conn, cancelled) == 2


async def test_resolved_dead_letters_go_by_their_own_retention_and_open_ones_never(
    database: Database,
) -> None:
    async with database.acquire() as conn:
        await make_tasks(conn, 3, status="failed", age_days=60, dead_letter="replayed")
        await make_tasks(conn, 2, status="failed", age_days=5, dead_letter="discarded")
        await make_tasks(conn, 2, status="failed", age_days=400, dead_letter="open")
    policy = RetentionPolicy(tasks_s={}, dead_letters_s=30 * DAY)
    done = await pruner(database, policy=policy).prune_once()
    assert done.dead_letters == 3
    async with database.acquire() as conn:
        left = await conn.fetch("SELECT status, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
        assert [(r["status"], r["count"]) for r in left] == [("discarded", 2), ("open", 2)]


async def test_batches_are_bounded_and_a_pass_can_stop_short(database: Database) -> None:
    async with database.acquire() as conn:
        await make_tasks(conn, 1250, status="completed", age_days=20, attempts=1)
        sizes = [
            (await retention.prune_tasks(conn, "completed", 14 * DAY, 500)).tasks for _ in range(4)
        ]
        assert sizes == [500, 500, 250, 0]
        await make_tasks(conn, 1250, status="completed", age_days=20, attempts=1)
    p = pruner(database, batch=500)
    first = await p.prune_once(max_batches=3)  # cancelled (none), completed, completed
    assert (first.tasks, first.more) == (1000, True)
    assert await p.iteration() == p.interval_s  # the rest, then a full interval's sleep
    async with database.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
    pruned = {
        s.labels["table"]: s.value
        for family in p.metrics.pruned.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert pruned == {"tasks": 1250.0, "task_executions": 1250.0, "dead_letters": 0.0}


async def test_oldest_terminal_age_per_status(database: Database) -> None:
    async with database.acquire() as conn:
        assert await retention.oldest_terminal_age(conn) == dict.fromkeys(
            retention.PRUNABLE_STATUSES
        )
        await make_tasks(conn, 1, status="failed", age_days=3)
        await make_tasks(conn, 1, status="failed", age_days=1)
        ages = await retention.oldest_terminal_age(conn)
    assert ages["completed"] is None
    assert ages["cancelled"] is None
    assert ages["failed"] == pytest.approx(3 * DAY, abs=60)


def test_bad_arguments_are_refused() -> None:
    async def call() -> None:
        await retention.prune_tasks(None, "queued", 1.0, 1)

    with pytest.raises(ValueError, match="status"):
        asyncio.run(call())


_PRUNE_FOREVER = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg
    from taskflow_common.store import retention

    async def main():
        conn = await asyncpg.connect(sys.argv[1])
        print("ready", flush=True)
        while True:
            done = await retention.prune_tasks(conn, "completed", 86400.0, 4000)
            print(done.tasks, flush=True)
            if done.tasks == 0:
                return

    asyncio.run(main())
    """
)


async def test_a_prune_killed_mid_batch_leaves_no_half_deleted_task(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    ids = await make_tasks(db, 30_000, status="completed", age_days=20, attempts=3)
    script = tmp_path / "prune.py"
    script.write_text(_PRUNE_FOREVER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        database_url,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    # Let a batch or two commit, then kill it in the middle of the next statement.
    assert int(await asyncio.wait_for(proc.stdout.readline(), 60)) == 4000
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    # The killed client's backend still finishes the statement it was running (and
    # commits it) before it notices the closed socket: measure once it is gone.
    async def backend_gone() -> bool:
        others = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state IS DISTINCT FROM 'idle'"
        )
        return bool(others == 0)

    await wait_for(backend_gone, timeout=30, what="the killed pruner's backend to exit")
    for conn in (db,):
        left = await present(conn, ids)
        assert 0 < left < len(ids) - 4000 + 1
        # Every task still there has all three executions; none has fewer.
        counts = await conn.fetch(
            """SELECT n, count(*) AS tasks FROM (
                   SELECT t.id, count(e.id) AS n FROM tasks t
                   LEFT JOIN task_executions e ON e.task_id = t.id GROUP BY t.id) x
               GROUP BY n"""
        )
        assert [(r["n"], r["tasks"]) for r in counts] == [(3, left)]
        assert await conn.fetchval("SELECT count(*) FROM task_executions") == 3 * left
