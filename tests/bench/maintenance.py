"""The scenarios of issue 15: a schedule's tick latency and what retention costs.

- :func:`tick_latency`: an ``every: 1s`` schedule for ``BENCH_TICK_SECONDS`` (10 s); per
  tick, its due time (``scheduled_for``) to the task row's ``created_at`` and to its
  publish (``dispatched_at``), database clock. Issue 15's target: queued within 100 ms.
- :func:`retention`: ``BENCH_PRUNE_ROWS`` (1,000,000) old completed tasks, each with
  its execution, inserted with ``INSERT ... SELECT generate_series``; then a burst with
  the dispatcher keeping everything (``TASK_RETENTION=0``) and a burst right after it
  restarted with pruning due (``TASK_RETENTION=14d``, ``DISPATCHER_PRUNE_INTERVAL=1s``),
  started once the pruner's first batch is gone (at a small ``BENCH_PRUNE_ROWS`` the
  prune may end before the burst does: ``prune_rows_deleted_during_burst`` says); then
  the time until every old row is gone, and the heap and index sizes of ``tasks`` and
  ``task_executions`` before, after the prune, after a plain ``VACUUM`` and after a
  second ``VACUUM`` and the same number of old rows inserted again (into the freed space).

The dispatcher is restarted with the bench's own environment at the end, so the
scenarios after these see the stack they always did.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from tests.bench.loadgen import percentile
from tests.bench.scenarios import BenchError, post_json, say

if TYPE_CHECKING:
    from tests.bench.scenarios import Scenarios

SCHEDULE = "bench.tick"
FILL_CHUNK = 200_000
"""Rows per fill statement (each its own transaction, so progress shows)."""
OLD_TYPE = "bench.old"
_FILL = """
WITH ins AS (
    INSERT INTO tasks (id, type, payload, priority, status, attempts, max_attempts, result,
                       dispatch_pending, dispatch_seq, dispatched_at, run_at, created_at,
                       updated_at, started_at, finished_at)
    SELECT gen_random_uuid(), $3, jsonb_build_object('i', g), 'normal', 'completed', 1, 3,
           '{"ok": true}'::jsonb, false, 1, t, t, t, t + interval '5 ms', t,
           t + interval '5 ms'
      FROM (SELECT g, now() - interval '30 days' - g * interval '1 s' AS t
              FROM generate_series($1::int, $2::int) AS g) AS s
    RETURNING id, created_at
)
INSERT INTO task_executions (task_id, attempt, status, worker_id, started_at, finished_at,
                             duration_ms, lease_expires_at)
SELECT id, 1, 'succeeded', 'bench-old', created_at, created_at + interval '5 ms', 5.0,
       created_at + interval '30 s'
  FROM ins
"""
_SIZES = """
SELECT c.relname AS name, pg_relation_size(c.oid)::float8 AS heap,
       pg_indexes_size(c.oid)::float8 AS indexes, s.n_live_tup::float8 AS live,
       s.n_dead_tup::float8 AS dead
  FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.relname IN ('tasks', 'task_executions')
"""
_INDEXES = """
SELECT indexrelname AS name, pg_relation_size(indexrelid)::float8 AS size
  FROM pg_stat_user_indexes WHERE relname IN ('tasks', 'task_executions')
"""
_MIB = 2**20


async def tick_latency(sc: Scenarios, seconds: float) -> dict[str, float]:
    """An ``every: 1s`` schedule for ``seconds``: due -> created and -> published, ms."""
    api = sc.stack.api_url
    body = {"name": SCHEDULE, "every": "1s", "task": {"type": "demo"}}
    status = await asyncio.to_thread(post_json, f"{api}/schedules", json.dumps(body).encode())
    if status != 201:
        raise BenchError(f"POST /schedules answered {status}")
    await asyncio.sleep(seconds)
    status = await asyncio.to_thread(post_json, f"{api}/schedules/{SCHEDULE}/pause", b"")
    if status != 200:
        raise BenchError(f"pausing the bench schedule answered {status}")
    deadline = time.monotonic() + 30
    while await sc.db.value(
        "SELECT count(*) FROM tasks WHERE schedule = $1 AND dispatch_pending", SCHEDULE
    ):
        if time.monotonic() > deadline:
            raise BenchError("the schedule's tasks were not published within 30 s")
        await asyncio.sleep(0.1)  # polling interval of the bench
    rows = await sc.db.rows(
        "SELECT extract(epoch FROM created_at - scheduled_for)::float8 * 1000 AS queued_ms,"
        " extract(epoch FROM dispatched_at - scheduled_for)::float8 * 1000 AS published_ms"
        " FROM tasks WHERE schedule = $1 AND scheduled_for IS NOT NULL",
        SCHEDULE,
    )
    await sc.db.value("DELETE FROM schedules WHERE name = $1", SCHEDULE)
    if len(rows) < max(1, int(seconds) - 2):
        raise BenchError(f"only {len(rows)} ticks fired in {seconds:g} s")
    queued = sorted(r["queued_ms"] for r in rows)
    published = sorted(r["published_ms"] for r in rows)
    return {
        "tick_ticks": float(len(rows)),
        "tick_queued_p50_ms": percentile(queued, 0.5),
        "tick_queued_p99_ms": percentile(queued, 0.99),
        "tick_queued_max_ms": queued[-1],
        "tick_published_p50_ms": percentile(published, 0.5),
        "tick_published_p99_ms": percentile(published, 0.99),
    }


async def _sizes(sc: Scenarios, label: str) -> dict[str, float]:
    await sc.db.value("ANALYZE tasks, task_executions")  # fresh n_live_tup / n_dead_tup
    await asyncio.sleep(0.7)  # the statistics collector reports within 500 ms
    out: dict[str, float] = {}
    for r in await sc.db.rows(_SIZES):
        name = "executions" if r["name"] == "task_executions" else "tasks"
        out[f"prune_{name}_heap_mib_{label}"] = r["heap"] / _MIB
        out[f"prune_{name}_index_mib_{label}"] = r["indexes"] / _MIB
        out[f"prune_{name}_dead_rows_{label}"] = r["dead"]
    for r in await sc.db.rows(_INDEXES):  # in the JSON only: which index grew
        out[f"prune_index_{r['name']}_mib_{label}"] = r["size"] / _MIB
    return out


async def _restart_dispatcher(sc: Scenarios, extra: dict[str, str]) -> None:
    stack = sc.stack
    assert stack.services is not None
    assert stack.dispatcher is not None
    await stack.dispatcher.stop(timeout=30)
    stack.dispatcher = await stack.services.start("dispatcher", stack.env | extra, timeout=60)


async def fill(sc: Scenarios, rows: int) -> float:
    """Insert ``rows`` completed tasks finished 30+ days ago, with executions; seconds."""
    started = time.monotonic()
    for first in range(1, rows + 1, FILL_CHUNK):
        last = min(rows, first + FILL_CHUNK - 1)
        await sc.db.value(_FILL, first, last, OLD_TYPE)
        say(f"retention: {last:,}/{rows:,} old rows inserted")
    return time.monotonic() - started


async def _old_rows(sc: Scenarios) -> int:
    n: int = await sc.db.value("SELECT count(*) FROM tasks WHERE type = $1", OLD_TYPE)
    return n


async def retention(sc: Scenarios, rows: int) -> dict[str, float]:
    """Bursts with and without pruning over ``rows`` old tasks; sizes; see the module."""
    out: dict[str, float] = {"prune_rows": float(rows)}
    await _restart_dispatcher(sc, {"TASK_RETENTION": "0"})  # keeps all: nothing is pruned
    out["prune_fill_s"] = await fill(sc, rows)
    out |= await _sizes(sc, "before")
    say("retention: burst, pruner idle (TASK_RETENTION=0)")
    idle = await sc.burst()
    out["prune_burst_without_tasks_per_s"] = idle["burst_tasks_per_s"]
    out["prune_burst_without_http_p99_ms"] = idle["burst_http_p99_ms"]
    await _restart_dispatcher(sc, {"TASK_RETENTION": "14d", "DISPATCHER_PRUNE_INTERVAL": "1s"})
    started = time.monotonic()
    left = await _old_rows(sc)
    while left == rows:  # the burst starts once the pruner does
        if time.monotonic() > started + 90:
            raise BenchError("the pruner deleted nothing within 90 s of the restart")
        await asyncio.sleep(0.05)  # polling interval of the bench
        left = await _old_rows(sc)
    say("retention: burst while the pruner deletes")
    busy = await sc.burst()
    after = await _old_rows(sc)
    out["prune_burst_with_tasks_per_s"] = busy["burst_tasks_per_s"]
    out["prune_burst_with_http_p99_ms"] = busy["burst_http_p99_ms"]
    out["prune_rows_deleted_during_burst"] = float(left - after)
    left = after
    await _pruned(sc, started, rows)
    elapsed = time.monotonic() - started
    out["prune_total_s"] = elapsed
    out["prune_rows_per_s"] = rows / elapsed
    out |= await _sizes(sc, "pruned")
    vacuum_started = time.monotonic()
    await sc.db.value("VACUUM tasks, task_executions")
    out["prune_vacuum_s"] = time.monotonic() - vacuum_started
    out |= await _sizes(sc, "vacuumed")
    # The same number of old rows again: they fill the space VACUUM freed (no growth
    # beyond the first fill's size), and the pruner (still running) removes them too.
    # A second VACUUM first, as autovacuum's next pass would: btree pages emptied by the
    # deletes are marked deleted by the first and recyclable only by a later one.
    await sc.db.value("VACUUM tasks, task_executions")
    await fill(sc, rows)
    out |= await _sizes(sc, "refilled")
    await _pruned(sc, time.monotonic(), rows)
    await _restart_dispatcher(sc, {})  # back to the bench's own settings
    return out


async def _pruned(sc: Scenarios, started: float, rows: int) -> None:
    """Wait until the pruner deleted every old row; :class:`BenchError` after a bound."""
    deadline = started + 120 + rows / 1000  # generous: at least 1,000 rows/s
    while left := await _old_rows(sc):
        if time.monotonic() > deadline:
            raise BenchError(f"the pruner left {left} of {rows} old rows")
        await asyncio.sleep(0.2)  # polling interval of the bench
