"""Dead letters by hand, as the dispatcher and worker would leave them, for dlq-monitor tests.

A failed task row (:func:`insert_failed_task`), its dead-letter message
(:func:`dead_letter`, :func:`publish`), and reads of what the monitor made of them
(:func:`listed`, :func:`consumer_settled`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import httpx

from taskflow_common import bus as bus_mod
from taskflow_common.messages import DeadLetter
from taskflow_common.subjects import HEADER_MSG_ID

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def db_fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run ``sql`` on a fresh connection to ``url``; return every row."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def insert_failed_task(url: str, *, type_: str = "demo", attempts: int = 3) -> uuid.UUID:
    """A task row as the worker leaves it after its last failed attempt."""
    task_id = uuid.uuid4()
    await db_fetch(
        url,
        "INSERT INTO tasks (id, type, priority, status, attempts, failed_attempts, max_attempts,"
        " last_error, dispatch_pending, dispatch_seq, finished_at)"
        " VALUES ($1, $2, 'high', 'failed', $3, $3, 3, 'boom', false, $3, now())",
        task_id,
        type_,
        attempts,
    )
    return task_id


def dead_letter(task_id: uuid.UUID, *, type_: str = "demo", error: str = "boom") -> DeadLetter:
    """The dead-letter message of a task that used up its 3 attempts."""
    return DeadLetter(
        reason="attempts exhausted",
        task_id=task_id,
        type=type_,
        priority="high",
        attempts=3,
        error=f"RuntimeError: {error}",
        failed_at=dt.datetime.now(dt.UTC).isoformat(),
    )


async def publish(
    bus: bus_mod.Bus, data: bytes, msg_id: str | None, traceparent: str | None = TRACEPARENT
) -> None:
    """Publish ``data`` on the dead-letter subject with a message id and a trace parent."""
    headers: dict[str, str] = {}
    if msg_id is not None:
        headers[HEADER_MSG_ID] = msg_id
    if traceparent is not None:
        headers["traceparent"] = traceparent
    await bus.js.publish(bus.names.dlq_subject, data, headers=headers or None)


async def listed(http: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    """The first page (up to 200) of the monitor's ``GET /dlq``, asserting 200."""
    resp = await http.get("/dlq", params={"limit": "200", **params})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def consumer_settled(bus: bus_mod.Bus) -> bool:
    """True when the monitor's consumer has nothing pending and nothing unacked."""
    info = await bus.js.consumer_info(bus.names.dlq_stream, bus.names.dlq_consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0
