"""One read of everything the invariants look at: rows, the dlq-monitor list, consumers."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import nats.js.errors

from tests.support.stack import Stack

PRIORITIES = ("high", "normal", "low")

# Errors that only mean "a server is restarting right now": the checker polls again.
DB_OUTAGE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a query cancelled while its connection dropped
)


@dataclass
class Snapshot:
    tasks: dict[str, asyncpg.Record]
    executions: dict[str, list[asyncpg.Record]]
    dead_letters: dict[str, list[asyncpg.Record]]
    listed_open: dict[str, int] | None  # task id -> open dead letters the dlq API lists
    listed_error: str | None
    consumers: dict[str, tuple[int, int]] | None  # name -> (pending, ack_pending)
    consumer_error: str | None
    live_workers: set[str]


async def _read_db(url: str, ids: list[uuid.UUID]) -> tuple[Any, Any, Any]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        tasks = await conn.fetch(
            """SELECT id, status, attempts, failed_attempts, max_attempts, version,
                      result IS NOT NULL AS has_result
                 FROM tasks WHERE id = ANY($1::uuid[])""",
            ids,
        )
        execs = await conn.fetch(
            """SELECT task_id, attempt, status, worker_id, error, started_at, finished_at
                 FROM task_executions WHERE task_id = ANY($1::uuid[])
                ORDER BY task_id, attempt""",
            ids,
        )
        letters = await conn.fetch(
            "SELECT task_id, status FROM dead_letters WHERE task_id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close(timeout=5)
    return tasks, execs, letters


async def _listed_open_dead_letters(stack: Stack, wanted: set[str]) -> dict[str, int]:
    """Count, per task, the open dead letters the dlq-monitor API lists (all pages)."""
    counts: Counter[str] = Counter()
    cursor: str | None = None
    for _ in range(1000):  # bounded: 200 per page
        params = {"limit": "200", "status": "open"}
        if cursor:
            params["cursor"] = cursor
        resp = await stack.http.get(f"{stack.dlq_url}/dlq", params=params, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        for item in body["items"]:
            if item.get("task_id") in wanted and item.get("status") == "open":
                counts[item["task_id"]] += 1
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return dict(counts)


async def consumer_states(env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Return ``{consumer: (num_pending, num_ack_pending)}`` for the three task consumers.

    Raises ``nats.js.errors.NotFoundError`` when a consumer or the stream is missing and
    nats-py's connection errors when the server does not answer.
    """
    nc = await nats.connect(
        env["NATS_URL"], connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = nc.jetstream(timeout=3)
        out: dict[str, tuple[int, int]] = {}
        for p in PRIORITIES:
            name = f"{env['NATS_CONSUMER_NAME']}-{p}"
            info = await js.consumer_info(env["NATS_STREAM_NAME"], name)
            out[name] = (info.num_pending or 0, info.num_ack_pending or 0)
        return out
    finally:
        await nc.close()


def _live_workers(stack: Stack) -> set[str]:
    return {
        p.env.get("WORKER_ID", f"pid-{p.pid}")
        for p in stack.workers
        if p.running and p.env.get("WORKER_ID")
    }


async def snapshot(
    stack: Stack, ids: list[uuid.UUID], *, dlq_api: bool, consumers: bool
) -> Snapshot:
    tasks, execs, letters = await _read_db(stack.env["DATABASE_URL"], ids)
    by_exec: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for e in execs:
        by_exec[str(e["task_id"])].append(e)
    by_dl: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for d in letters:
        by_dl[str(d["task_id"])].append(d)
    listed: dict[str, int] | None = None
    listed_error: str | None = None
    if dlq_api:
        try:
            listed = await _listed_open_dead_letters(stack, {str(i) for i in ids})
        except httpx.HTTPError as exc:
            listed_error = f"{exc.__class__.__name__}: {exc}"
    states: dict[str, tuple[int, int]] | None = None
    error: str | None = None
    if consumers:
        try:
            states = await consumer_states(stack.env)
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
    return Snapshot(
        tasks={str(t["id"]): t for t in tasks},
        executions=dict(by_exec),
        dead_letters=dict(by_dl),
        listed_open=listed,
        listed_error=listed_error,
        consumers=states,
        consumer_error=error,
        live_workers=_live_workers(stack),
    )
