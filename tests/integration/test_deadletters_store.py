"""store.deadletters against a real, migrated Postgres: record, list, stats, replay, discard."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from taskflow_common import db
from taskflow_common.config import CommonSettings, load
from taskflow_common.errors import InvalidCursor, InvalidStateError, NotFoundError
from taskflow_common.messages import DeadLetter
from taskflow_common.store import deadletter_stats, deadletters
from taskflow_common.store.rows import dead_letter_json


async def connect(url: str) -> asyncpg.Connection:
    """One connection with TaskFlow's jsonb codecs (as the services have)."""
    return await db.connect(load(CommonSettings, {"DATABASE_URL": url}))


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def insert_task(
    conn: asyncpg.Connection,
    *,
    status: str = "failed",
    type_: str = "demo",
    attempts: int = 3,
    failed_attempts: int = 3,
    **extra: Any,
) -> uuid.UUID:
    """Insert a task row directly (as if it had run and ended in ``status``)."""
    task_id = uuid.uuid4()
    cols = {
        "id": task_id,
        "type": type_,
        "priority": "normal",
        "status": status,
        "attempts": attempts,
        "failed_attempts": failed_attempts,
        "max_attempts": 3,
        "dispatch_pending": False,
        "dispatch_seq": attempts,
        "last_error": "boom",
        "result": {"partial": True},
        "finished_at": dt.datetime.now(dt.UTC),
        **extra,
    }
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sql = f"INSERT INTO tasks ({names}) VALUES ({params})"  # noqa: S608 - fixed column names
    await conn.execute(sql, *cols.values())
    for attempt in range(1, attempts + 1):
        await conn.execute(
            "INSERT INTO task_executions (task_id, attempt, status, worker_id, error,"
            " finished_at, lease_expires_at) VALUES ($1, $2, 'failed', 'w1', 'boom', now(), now())",
            task_id,
            attempt,
        )
    return task_id


def letter(task_id: uuid.UUID | None, **kw: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "reason": "attempts exhausted",
        "task_id": task_id,
        "type": "demo",
        "priority": "normal",
        "attempts": 3,
        "error": "RuntimeError: boom\n  at line 1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    return DeadLetter(**(base | kw))


async def test_record_is_idempotent_per_dedupe_key(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn)
    dl = letter(task_id, failed_at="2026-11-29T10:00:00.5Z")

    assert await deadletters.record(conn, f"dlq:{task_id}:3", dl) is True
    assert await deadletters.record(conn, f"dlq:{task_id}:3", dl) is False
    assert await deadletters.record(conn, f"dlq:{task_id}:3", letter(task_id, error="x")) is False

    rows = await conn.fetch("SELECT * FROM dead_letters")
    assert len(rows) == 1
    row = rows[0]
    assert row["task_id"] == task_id
    assert row["status"] == "open"
    assert row["attempts"] == 3
    assert row["error"].startswith("RuntimeError: boom")
    assert row["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert row["failed_at"] == dt.datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=dt.UTC)


async def test_record_handles_unknown_task_nul_bytes_and_raw(conn: asyncpg.Connection) -> None:
    ghost = uuid.uuid4()
    assert await deadletters.record(
        conn, "ghost", letter(ghost, type=None, error="bad\x00byte", failed_at="not a time")
    )
    raw = DeadLetter(reason="undecodable dead letter", raw=b"\x00\xff garbage", subject="t.dlq")
    assert await deadletters.record(conn, "nomsgid:1", raw)

    ghost_row = await conn.fetchrow("SELECT * FROM dead_letters WHERE dedupe_key = 'ghost'")
    assert ghost_row["task_id"] is None  # the column references tasks
    assert str(ghost) in ghost_row["reason"]
    assert ghost_row["error"] == "bad\ufffdbyte"
    assert ghost_row["failed_at"] is not None  # the database clock stood in
    raw_row = await conn.fetchrow("SELECT * FROM dead_letters WHERE dedupe_key = 'nomsgid:1'")
    assert raw_row["raw"] == b"\x00\xff garbage"
    assert raw_row["task_id"] is None


async def test_record_fills_type_and_priority_from_the_task(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn, type_="email.send")
    await deadletters.record(conn, "k", DeadLetter(reason="malformed", task_id=task_id))
    row = await conn.fetchrow("SELECT type, priority FROM dead_letters")
    assert (row["type"], row["priority"]) == ("email.send", "normal")


async def test_concurrent_records_of_one_key_store_one_row(database_url: str) -> None:
    conns = [await connect(database_url) for _ in range(8)]
    try:
        dl = letter(None)
        results = await asyncio.gather(*(deadletters.record(c, "same", dl) for c in conns))
        assert sorted(results) == [False] * 7 + [True]
        assert await conns[0].fetchval("SELECT count(*) FROM dead_letters") == 1
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def seed(conn: asyncpg.Connection, n: int) -> list[str]:
    """Record ``n`` dead letters one minute apart (newest last); return their keys."""
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    keys = []
    for i in range(n):
        key = f"k{i:03d}"
        await deadletters.record(
            conn,
            key,
            letter(
                None,
                type="even" if i % 2 == 0 else "odd",
                error=f"ValueError: item {i} 100%_done" if i % 3 == 0 else f"KeyError: {i}",
                failed_at=(base + dt.timedelta(minutes=i)).isoformat(),
            ),
        )
        keys.append(key)
    return keys


async def test_list_is_newest_first_and_pages_are_stable(conn: asyncpg.Connection) -> None:
    keys = await seed(conn, 25)
    seen: list[str] = []
    page = await deadletters.list_dead_letters(conn, limit=10)
    pages = 1
    # A dead letter arriving between pages (newer than everything) must not shift them.
    await deadletters.record(conn, "late", letter(None))
    while True:
        seen += [r["dedupe_key"] for r in page.items]
        if page.next_cursor is None:
            break
        page = await deadletters.list_dead_letters(conn, limit=10, cursor=page.next_cursor)
        pages += 1
    assert pages == 3
    assert seen == list(reversed(keys))


async def test_list_filters(conn: asyncpg.Connection) -> None:
    await seed(conn, 12)
    odd = await deadletters.list_dead_letters(conn, type="odd")
    assert {r["type"] for r in odd.items} == {"odd"}
    assert len(odd.items) == 6

    value_errors = await deadletters.list_dead_letters(conn, error_contains="valueerror")
    assert [r["dedupe_key"] for r in value_errors.items] == ["k009", "k006", "k003", "k000"]
    # LIKE wildcards in the filter match literally.
    assert len((await deadletters.list_dead_letters(conn, error_contains="100%_d")).items) == 4
    assert (await deadletters.list_dead_letters(conn, error_contains="1000%")).items == []
    # The reason is searched too.
    assert len((await deadletters.list_dead_letters(conn, error_contains="EXHAUSTED")).items) == 12

    await conn.execute("UPDATE dead_letters SET status = 'discarded' WHERE dedupe_key = 'k011'")
    discarded = await deadletters.list_dead_letters(conn, status="discarded")
    assert [r["dedupe_key"] for r in discarded.items] == ["k011"]
    both = await deadletters.list_dead_letters(conn, type="odd", status="open", limit=2)
    assert [r["dedupe_key"] for r in both.items] == ["k009", "k007"]
    assert both.next_cursor is not None


@pytest.mark.parametrize("cursor", ["", "abc", "W10", "WyJ4IiwieSJd", "!!!"])
async def test_list_rejects_foreign_cursors(conn: asyncpg.Connection, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        await deadletters.list_dead_letters(conn, cursor=cursor)


async def test_stats_counts_by_type_error_and_window(conn: asyncpg.Connection) -> None:
    now = await conn.fetchval("SELECT now()")
    ages = {"a1": dt.timedelta(minutes=5), "a2": dt.timedelta(hours=3), "a3": dt.timedelta(days=3)}
    for key, age in ages.items():
        await deadletters.record(
            conn, key, letter(None, type="a", failed_at=(now - age).isoformat())
        )
    await deadletters.record(
        conn,
        "b1",
        letter(None, type="b", error="Other", failed_at=(now - dt.timedelta(days=30)).isoformat()),
    )
    await deadletters.record(conn, "raw", DeadLetter(reason="undecodable dead letter", raw=b"x"))
    await conn.execute("UPDATE dead_letters SET status = 'replayed' WHERE dedupe_key = 'a3'")

    stats = await deadletter_stats.stats(conn)
    assert stats["windows"] == ["1h", "24h", "7d", "all"]
    assert stats["total"] == {"1h": 2, "24h": 3, "7d": 4, "all": 5}
    assert stats["by_status"] == {"open": 4, "replayed": 1, "discarded": 0}
    by_type = {t["type"]: t["counts"] for t in stats["by_type"]}
    assert by_type["a"] == {"1h": 1, "24h": 2, "7d": 3, "all": 3}
    assert by_type["b"]["all"] == 1
    assert by_type[None]["1h"] == 1
    by_error = {e["error"]: e["counts"]["all"] for e in stats["by_error"]}
    # First line only; the reason stands in when there is no error.
    assert by_error == {"RuntimeError: boom": 3, "Other": 1, "undecodable dead letter": 1}
    assert stats["by_type"][0]["type"] == "a"  # most frequent first


async def test_stats_of_an_empty_table(conn: asyncpg.Connection) -> None:
    stats = await deadletter_stats.stats(conn)
    assert stats["total"] == {"1h": 0, "24h": 0, "7d": 0, "all": 0}
    assert stats["by_type"] == []
    assert stats["by_error"] == []


async def test_replay_requeues_with_a_fresh_budget(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn, dead_letter_pending=True, version=7)
    await deadletters.record(conn, f"dlq:{task_id}:3", letter(task_id))
    await deadletters.record(conn, f"dlq:{task_id}:1", letter(task_id, attempts=1))
    # An older failure's dead letter (recorded resolved: the task moved on), discarded.
    await conn.execute(
        "UPDATE dead_letters SET status = 'discarded' WHERE dedupe_key = $1", f"dlq:{task_id}:1"
    )

    row = await deadletters.replay(conn, task_id)
    assert row["status"] == "queued"
    assert row["failed_attempts"] == 0
    assert row["attempts"] == 3  # the next run is attempt 4
    assert row["version"] == 8
    assert row["result"] is None
    assert row["finished_at"] is None
    assert row["last_error"] == "boom"  # history kept
    assert row["dead_letters_replayed"] == 1

    task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert task["dispatch_pending"] is True
    assert task["dead_letter_pending"] is False
    assert task["run_at"] <= await conn.fetchval("SELECT now()")
    assert task["updated_at"] == task["run_at"]
    assert (
        await conn.fetchval("SELECT count(*) FROM task_executions WHERE task_id = $1", task_id) == 3
    )
    letters = {
        r["dedupe_key"]: (r["status"], r["resolved_at"] is not None)
        for r in await conn.fetch("SELECT * FROM dead_letters")
    }
    assert letters == {
        f"dlq:{task_id}:3": ("replayed", True),
        f"dlq:{task_id}:1": ("discarded", True),
    }


async def test_replay_of_a_cancelled_task(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn, status="cancelled", failed_attempts=1)
    row = await deadletters.replay(conn, task_id)
    assert (row["status"], row["failed_attempts"], row["dead_letters_replayed"]) == ("queued", 0, 0)


@pytest.mark.parametrize("status", ["queued", "processing", "retrying", "completed"])
async def test_replay_refuses_live_or_completed_tasks(
    conn: asyncpg.Connection, status: str
) -> None:
    task_id = await insert_task(conn)
    await deadletters.record(conn, "k", letter(task_id))  # open: recorded while failed
    await conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, status)
    with pytest.raises(InvalidStateError, match=status) as info:
        await deadletters.replay(conn, task_id)
    assert info.value.code == "invalid_state"
    unchanged = await conn.fetchrow("SELECT status, version FROM tasks WHERE id = $1", task_id)
    assert (unchanged["status"], unchanged["version"]) == (status, 1)
    assert await conn.fetchval("SELECT status FROM dead_letters") == "open"


async def test_replay_of_an_unknown_task(conn: asyncpg.Connection) -> None:
    with pytest.raises(NotFoundError):
        await deadletters.replay(conn, uuid.uuid4())


async def test_concurrent_replays_succeed_once(database_url: str) -> None:
    setup = await connect(database_url)
    task_id = await insert_task(setup)
    conns = [await connect(database_url) for _ in range(5)]
    try:
        results = await asyncio.gather(
            *(deadletters.replay(c, task_id) for c in conns), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(
            isinstance(r, InvalidStateError) for r in results if isinstance(r, BaseException)
        )
        assert await setup.fetchval("SELECT version FROM tasks WHERE id = $1", task_id) == 2
    finally:
        await asyncio.gather(setup.close(), *(c.close() for c in conns))


async def test_get_returns_letters_task_and_executions(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn)
    await deadletters.record(conn, "old", letter(task_id, failed_at="2026-01-01T00:00:00Z"))
    await deadletters.record(conn, "new", letter(task_id, failed_at="2026-02-01T00:00:00Z"))
    detail = await deadletters.get(conn, task_id)
    assert [r["dedupe_key"] for r in detail.dead_letters] == ["new", "old"]
    assert detail.task is not None
    assert detail.task["id"] == task_id
    assert [e["attempt"] for e in detail.executions] == [1, 2, 3]

    await deadletters.record(conn, "orphan", DeadLetter(reason="undecodable dead letter", raw=b"?"))
    orphan_id = await conn.fetchval("SELECT id FROM dead_letters WHERE dedupe_key = 'orphan'")
    by_own_id = await deadletters.get(conn, orphan_id)
    assert [r["dedupe_key"] for r in by_own_id.dead_letters] == ["orphan"]
    assert by_own_id.task is None
    assert by_own_id.executions == []

    with pytest.raises(NotFoundError):
        await deadletters.get(conn, uuid.uuid4())


async def test_discard_by_task_or_own_id(conn: asyncpg.Connection) -> None:
    task_id = await insert_task(conn)
    await deadletters.record(conn, "a", letter(task_id))
    await deadletters.record(conn, "orphan", DeadLetter(reason="undecodable dead letter", raw=b"?"))
    orphan_id = await conn.fetchval("SELECT id FROM dead_letters WHERE dedupe_key = 'orphan'")

    rows = await deadletters.discard(conn, task_id)
    assert [(r["dedupe_key"], r["status"]) for r in rows] == [("a", "discarded")]
    assert rows[0]["resolved_at"] is not None
    assert [r["dedupe_key"] for r in await deadletters.discard(conn, orphan_id)] == ["orphan"]
    # The task itself is untouched.
    assert await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id) == "failed"

    with pytest.raises(InvalidStateError, match="discarded"):
        await deadletters.discard(conn, task_id)
    with pytest.raises(NotFoundError):
        await deadletters.discard(conn, uuid.uuid4())
    # A discarded dead letter does not block a replay, and is not flipped to replayed.
    await deadletters.replay(conn, task_id)
    assert await conn.fetchval("SELECT status FROM dead_letters WHERE dedupe_key = 'a'") == (
        "discarded"
    )


def test_dead_letter_json_shape() -> None:
    ident, task_id = uuid.uuid4(), uuid.uuid4()
    at = dt.datetime(2026, 11, 29, 15, 3, 28, 123456, tzinfo=dt.UTC)
    row = {
        "id": ident,
        "task_id": task_id,
        "type": "demo",
        "priority": "high",
        "attempts": 3,
        "error": "boom",
        "reason": "attempts exhausted",
        "subject": None,
        "raw": b"abc",
        "trace_id": None,
        "status": "open",
        "failed_at": at,
        "recorded_at": at,
        "resolved_at": None,
    }
    out = dead_letter_json(row, with_raw=True)
    assert out["id"] == str(ident)
    assert out["task_id"] == str(task_id)
    assert out["failed_at"] == "2026-11-29T15:03:28.123456Z"
    assert out["raw_bytes"] == 3
    assert out["raw"] == "YWJj"
    assert "raw" not in dead_letter_json(row)
