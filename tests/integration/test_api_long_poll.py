"""``?wait=`` and the Server-Sent Events stream in-process: both answer from LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import httpx
import orjson
import pytest

from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from taskflow_ingest_api.app import create_app
from tests.support.api import (
    TASKS,
    assert_problem,
    claim_first,
    listening,
    serving,
    settings_from,
    submit_task,
)
from tests.support.timing import floor_plus, slack
from tests.support.waiting import wait_for

# -- the long poll -----------------------------------------------------------------------------


async def test_wait_answers_as_soon_as_the_task_finishes(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api)
    claim = await claim_first(db, task["id"])
    started = time.monotonic()
    waiting = asyncio.create_task(
        api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=30s")
    )
    await listening(api, waiters=1)
    assert not waiting.done()
    finished = time.monotonic()
    assert await attempts.succeed(db, claim.task_id, claim.attempt, '{"r": 1}')
    result = await asyncio.wait_for(waiting, 5)
    answered = time.monotonic()
    assert result.status_code == 200, result.text
    assert (result.json["task"]["status"], result.json["task"]["result"]) == ("completed", {"r": 1})
    assert answered - finished < slack(1.0), (
        f"answered {answered - finished:.3f} s after the commit"
    )
    assert answered - started < slack(10)


async def test_wait_and_events_do_not_queue_behind_a_locked_task_row(
    api_env: dict[str, str], db: asyncpg.Connection
) -> None:
    """A dispatcher waiting for PubAcks (NATS down) holds due rows locked for seconds.

    ``?wait`` and ``/events`` only read: they answer in about their own time while the
    row is locked, and the change that follows the lock is still seen (a regression of
    migration 0003's watch UPDATE, which queued behind the lock and timed out as 503).
    """
    app = create_app(settings_from(api_env, DB_STATEMENT_TIMEOUT="2s"))
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        task = (await client.post(TASKS, json={"type": "demo"})).json()["task"]
        tid = uuid.UUID(task["id"])
        async with db.transaction():  # plays the dispatcher's locked outbox pass
            await db.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", tid)
            started = time.monotonic()
            answer = await client.get(f"{TASKS}/{tid}", params={"wait": "300ms"})
            elapsed = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert answer.json()["task"]["status"] == "queued"
            assert elapsed < floor_plus(0.3, 1.2), (
                f"?wait=300ms took {elapsed:.2f} s behind a row lock"
            )
            seen: list[str] = []
            async with client.stream("GET", f"{TASKS}/{tid}/events") as response:
                assert response.status_code == 200
                async for name, data in _events(response):
                    if name == ":":
                        continue
                    seen.append(data["status"])
                    break
        assert seen == ["queued"]
        # The lock is gone; the claim that follows is heard by a waiter.
        waiting = asyncio.create_task(client.get(f"{TASKS}/{tid}", params={"wait": "10s"}))

        async def parked() -> bool:
            health = (await client.get("/api/v1/health")).json()
            return bool(health["checks"]["events"]["waiters"] >= 1)

        await wait_for(parked, 5, what="the waiter to park")
        claim = await claim_first(db, task["id"])
        assert await attempts.succeed(db, claim.task_id, claim.attempt, "1")
        done = await asyncio.wait_for(waiting, 5)
        assert done.json()["task"]["status"] == "completed"


async def test_wait_ends_with_the_current_state(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api)
    started = time.monotonic()
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=400ms")
    elapsed = time.monotonic() - started
    assert result.status_code == 200
    assert result.json["task"]["status"] == "queued"
    assert 0.4 <= elapsed < floor_plus(0.4, 1.6), elapsed
    # A change that is not the end does not answer early, but is what the wait ends with.
    await claim_first(db, task["id"])
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=300ms")
    assert result.json["task"]["status"] == "processing"
    # Already finished: at once.
    await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    started = time.monotonic()
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=60s")
    assert result.json["task"]["status"] == "cancelled"
    assert time.monotonic() - started < slack(1.0)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("wait=61s", "wait"),
        ("wait=60001ms", "wait"),
        ("wait=10", "wait"),
        ("wait=1m", "wait"),
        ("wait=-1s", "wait"),
        ("wait=1s&wait=2s", "wait"),
        ("wiat=1s", "wiat"),
    ],
)
async def test_bad_waits_are_422(api: falcon.testing.ASGIConductor, query: str, field: str) -> None:
    result = await api.simulate_get(f"{TASKS}/{uuid.uuid4()}", query_string=query)
    doc = assert_problem(result, 422, "validation_error")
    assert doc["errors"][0]["field"] == field


async def test_wait_on_an_unknown_task_is_404_at_once(api: falcon.testing.ASGIConductor) -> None:
    started = time.monotonic()
    result = await api.simulate_get(f"{TASKS}/{uuid.uuid4()}", query_string="wait=30s")
    assert_problem(result, 404, "not_found")
    assert time.monotonic() - started < slack(1.0)


async def test_waiters_survive_a_lost_listen_connection(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api)
    claim = await claim_first(db, task["id"])
    waiting = asyncio.create_task(
        api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=30s")
    )
    await listening(api, waiters=1)
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    assert killed == 1
    # Finished while nobody listened: the reconnect wakes the waiter to re-read.
    assert await attempts.succeed(db, claim.task_id, claim.attempt, "null")
    result = await asyncio.wait_for(waiting, 10)
    assert result.json["task"]["status"] == "completed"
    await listening(api)


# -- the event stream ----------------------------------------------------------------------------


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """Parse an SSE body into ``(event, data)``; comments come as ``(":", text)``."""
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield ":", line[1:].strip()
        elif line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif line == "" and name:
            yield name, orjson.loads(data)
            name, data = "", ""


async def test_event_stream_follows_a_task_to_its_end(
    api_env: dict[str, str], db: asyncpg.Connection
) -> None:
    app = create_app(settings_from(api_env, SSE_HEARTBEAT_S="0.2"))
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        task = (await client.post(TASKS, json={"type": "demo"})).json()["task"]
        seen: list[tuple[str, str]] = []
        async with client.stream("GET", f"{TASKS}/{task['id']}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for name, data in _events(response):
                seen.append((name, data if name == ":" else data["status"]))
                if seen == [("state", "queued")]:
                    claim = await claim_first(db, task["id"])
                elif name == ":" and ("state", "processing") in seen and len(seen) < 10:
                    # Idle (a keep-alive came) after the claim: now finish it.
                    await attempts.succeed(db, claim.task_id, claim.attempt, "1")
        # Ended by itself after the terminal state.
        events = [s for s in seen if s[0] != ":"]
        assert events == [
            ("state", "queued"),
            ("attempt", "started"),
            ("state", "processing"),
            ("attempt", "succeeded"),
            ("state", "completed"),
        ]
        assert (":", "keep-alive") in seen
        missing = await client.get(f"{TASKS}/{uuid.uuid4()}/events")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_event_stream_of_a_finished_task_is_its_history(
    api_env: dict[str, str], db: asyncpg.Connection
) -> None:
    app = create_app(settings_from(api_env))
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        task = (await client.post(TASKS, json={"type": "demo", "max_attempts": 2})).json()["task"]
        claim = await claim_first(db, task["id"])
        await attempts.fail(
            db,
            claim.task_id,
            claim.attempt,
            error="x",
            error_type="E",
            permanent=False,
            backoff_s=0,
        )
        row = await db.fetchrow("SELECT dispatch_seq FROM tasks WHERE id = $1", claim.task_id)
        second = await claim_store.claim(db, claim.task_id, row["dispatch_seq"] + 1, "w", 30.0)
        assert isinstance(second, claim_store.Claim)
        await attempts.succeed(db, claim.task_id, second.attempt, "2")
        async with client.stream("GET", f"{TASKS}/{task['id']}/events") as response:
            seen = [(n, d["status"]) async for n, d in _events(response)]
    assert seen == [("state", "completed"), ("attempt", "failed"), ("attempt", "succeeded")]
