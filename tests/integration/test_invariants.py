"""The invariant checker itself: each rule fires on a state that breaks it, and only then.

Rows are written straight into a real database (and messages into a real stream), so
every fault scenario's "no violations" means something.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.js import api

from taskflow_devstack.servers import NatsServer
from tests.support.invariants import VersionWatcher, Violation, check_invariants
from tests.support.procs import ServiceFactory
from tests.support.stack import Stack

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def stack(
    database_url: str, nats_server: NatsServer, stack_names: dict[str, str], tmp_path: Path
) -> Stack:
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url, **stack_names}
    return Stack(ServiceFactory(tmp_path), env)


async def add_task(
    conn: asyncpg.Connection,
    status: str,
    execs: list[tuple[str, float, float | None]],
    *,
    failed_attempts: int | None = None,
    result: Any = None,
    dead_letters: tuple[str, ...] = (),
) -> str:
    """Insert a task with executions ``(status, start s, end s | None)`` numbered 1..n."""
    tid = uuid.uuid4()
    counted = sum(1 for s, _, _ in execs if s in ("failed", "abandoned"))
    await conn.execute(
        """INSERT INTO tasks (id, type, priority, status, attempts, failed_attempts,
                              max_attempts, result, dispatch_pending)
           VALUES ($1, 'demo', 'normal', $2, $3, $4, 3, $5::text::jsonb, false)""",
        tid,
        status,
        len(execs),
        counted if failed_attempts is None else failed_attempts,
        None if result is None else '{"ok": true}',
    )
    for n, (estatus, start, end) in enumerate(execs, start=1):
        await conn.execute(
            """INSERT INTO task_executions (task_id, attempt, status, worker_id, error,
                                            started_at, finished_at, lease_expires_at)
               VALUES ($1, $2, $3, 'gone-worker', $4, $5, $6, $5)""",
            tid,
            n,
            estatus,
            "reason" if estatus in ("abandoned", "interrupted", "failed") else None,
            at(start),
            None if end is None else at(end),
        )
    for i, dl_status in enumerate(dead_letters):
        await conn.execute(
            """INSERT INTO dead_letters (dedupe_key, task_id, reason, status, failed_at)
               VALUES ($1, $2, 'failed', $3, now())""",
            f"dlq:{tid}:{i}",
            tid,
            dl_status,
        )
    return str(tid)


def by_task(violations: list[Violation]) -> dict[str | None, set[str]]:
    out: dict[str | None, set[str]] = {}
    for v in violations:
        out.setdefault(v.task_id, set()).add(v.invariant)
    return out


async def test_each_rule_fires_on_a_state_that_breaks_it(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        ok = await add_task(conn, "completed", [("succeeded", 0, 1)], result=True)
        ok_takeover = await add_task(
            conn, "completed", [("abandoned", 0, 10), ("succeeded", 5, 12)], result=True
        )
        ok_failed = await add_task(conn, "failed", [("failed", 0, 1)] * 1, dead_letters=("open",))
        dup = await add_task(
            conn, "completed", [("succeeded", 0, 1), ("succeeded", 2, 3)], result=True
        )
        overlap = await add_task(
            conn, "completed", [("failed", 0, 10), ("succeeded", 5, 12)], result=True
        )
        orphan = await add_task(conn, "failed", [("started", 0, None)], dead_letters=("open",))
        no_letter = await add_task(conn, "failed", [("failed", 0, 1)])
        two_letters = await add_task(
            conn, "failed", [("failed", 0, 1)], dead_letters=("open", "open")
        )
        letter_on_success = await add_task(
            conn, "completed", [("succeeded", 0, 1)], result=True, dead_letters=("open",)
        )
        miscounted = await add_task(
            conn, "failed", [("failed", 0, 1)], failed_attempts=0, dead_letters=("open",)
        )
        stuck = await add_task(conn, "processing", [])
    finally:
        await conn.close()
    ids = [ok, ok_takeover, ok_failed, dup, overlap, orphan, no_letter, two_letters]
    ids += [letter_on_success, miscounted, stuck]
    report = await check_invariants(stack, ids, deadline_s=0.5, dlq_api=False, consumers=False)
    found = by_task(report.violations)
    assert ok not in found
    assert ok_takeover not in found
    assert ok_failed not in found
    assert "I2" in found[dup]
    assert report.duplicates == 1
    assert "I2" in found[overlap]
    assert "I3" in found[orphan]
    assert found[no_letter] == {"I4"}
    assert found[two_letters] == {"I4"}
    assert found[letter_on_success] == {"I4"}
    assert found[miscounted] == {"I4"}
    assert found[stuck] == {"I1"}
    assert not report.ok
    assert report.statuses["processing"] == 1
    with pytest.raises(AssertionError, match="I1"):
        report.assert_ok()


async def test_i5_fires_while_a_task_consumer_holds_messages(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        done = await add_task(conn, "completed", [("succeeded", 0, 1)], result=True)
    finally:
        await conn.close()
    env = stack.env
    nc = await nats.connect(env["NATS_URL"])
    try:
        js = nc.jetstream()
        prefix = env["NATS_SUBJECT_PREFIX"]
        await js.add_stream(
            name=env["NATS_STREAM_NAME"],
            subjects=[f"{prefix}.high", f"{prefix}.normal", f"{prefix}.low"],
            retention=api.RetentionPolicy.WORK_QUEUE,
        )
        for p in ("high", "normal", "low"):
            await js.add_consumer(
                env["NATS_STREAM_NAME"],
                api.ConsumerConfig(
                    durable_name=f"{env['NATS_CONSUMER_NAME']}-{p}",
                    filter_subject=f"{prefix}.{p}",
                    ack_policy=api.AckPolicy.EXPLICIT,
                ),
            )
        clean = await check_invariants(stack, [done], deadline_s=0.5, dlq_api=False)
        assert clean.ok, clean.describe()
        await js.publish(f"{prefix}.normal", b"{}")
        dirty = await check_invariants(stack, [done], deadline_s=0.5, dlq_api=False)
    finally:
        await nc.close()
    assert [v.invariant for v in dirty.violations] == ["I5"]
    assert "pending=1" in dirty.violations[0].detail


def test_the_version_watcher_flags_regressions_and_changed_terminal_states() -> None:
    watcher = VersionWatcher("postgresql://unused")
    watcher.observe([("a", 1, "queued"), ("b", 1, "queued"), ("c", 3, "completed")])
    watcher.observe([("a", 2, "processing"), ("b", 1, "processing"), ("c", 3, "completed")])
    watcher.observe([("a", 1, "processing"), ("b", 2, "completed"), ("c", 4, "queued")])
    watcher.observe([("d", 5, "failed")])
    problems = by_task(watcher.final({}, replayed=set()))
    assert problems == {"a": {"I6"}, "b": {"I6"}, "c": {"I6"}}
    # An explicit replay may take a terminal task back to queued.
    replay = VersionWatcher("postgresql://unused")
    replay.observe([("c", 3, "failed")])
    replay.observe([("c", 4, "queued")])
    assert replay.final({}, replayed={"c"}) == []
    assert [v.invariant for v in replay.final({}, replayed=set())] == ["I6"]
