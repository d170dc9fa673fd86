"""Issue 6's REST additions against a real Postgres and NATS, the app in-process.

Per-task options, batch submit, tag filters, cancel, retry, the long poll, the event
stream and the OpenAPI document. Where a worker would act, the test runs the worker's
own SQL (:mod:`taskflow_common.store.attempts`) on the test database; the end-to-end
versions with real worker processes are in ``tests/e2e/test_rest_additions.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import httpx
import nats
import orjson
import pytest
import schemathesis

from taskflow_common.config import load
from taskflow_common.messages import CancelRequest
from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from taskflow_common.subjects import Names
from taskflow_devstack.servers import NatsServer
from taskflow_ingest_api.app import create_app
from taskflow_ingest_api.openapi import PROBLEM_CODES, document
from taskflow_ingest_api.settings import ApiSettings
from tests.integration.test_ingest_api import assert_problem, count_tasks, serving
from tests.support.waiting import wait_for

TASKS = "/api/v1/tasks"
BATCH = f"{TASKS}/batch"


@pytest.fixture
def api_env(
    database_url: str, nats_server: NatsServer, stack_names: dict[str, str]
) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "NATS_URL": nats_server.url, **stack_names}


def settings_from(env: Mapping[str, str], **extra: str) -> ApiSettings:
    return load(ApiSettings, {**env, **extra})


@pytest.fixture
async def api(api_env: dict[str, str]) -> AsyncIterator[falcon.testing.ASGIConductor]:
    async with falcon.testing.ASGIConductor(create_app(settings_from(api_env))) as client:
        await _listening(client)
        yield client


async def _listening(client: falcon.testing.ASGIConductor, waiters: int = 0) -> None:
    """Wait until the API's LISTEN connection is up with at least ``waiters`` parked."""

    async def ready() -> bool:
        events = (await client.simulate_get("/api/v1/health")).json["checks"]["events"]
        return bool(events["ok"] and events["waiters"] >= waiters)

    await wait_for(ready, 10, what=f"LISTEN up with {waiters} waiters")


async def _submit(client: falcon.testing.ASGIConductor, **body: Any) -> dict[str, Any]:
    result = await client.simulate_post(TASKS, json={"type": "demo", **body})
    assert result.status_code == 201, result.text
    return result.json["task"]  # type: ignore[no-any-return]


async def _claim(db: asyncpg.Connection, task_id: str) -> claim_store.Claim:
    """Claim the task as a worker would for its first dispatch."""
    claim = await claim_store.claim(db, uuid.UUID(task_id), 1, "test-worker", 30.0)
    assert isinstance(claim, claim_store.Claim), claim
    return claim


# -- per-task options --------------------------------------------------------------------


async def test_options_are_stored_and_shown(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    task = await _submit(
        api,
        run_at=later.isoformat().replace("+00:00", "Z"),
        timeout_s=2.5,
        tags={"team": "billing", "env": "prod"},
        max_attempts=7,
    )
    assert (task["timeout_s"], task["tags"], task["max_attempts"]) == (
        2.5,
        {"team": "billing", "env": "prod"},
        7,
    )
    assert task["status"] == "queued"
    assert dt.datetime.fromisoformat(task["run_at"]) == later
    delayed = await _submit(api, delay_ms=90_000)
    row = await db.fetchrow(
        "SELECT run_at - created_at AS lag FROM tasks WHERE id = $1", uuid.UUID(delayed["id"])
    )
    assert row["lag"] == dt.timedelta(seconds=90)
    past = await _submit(api, run_at="2001-01-01T00:00:00+02:00")
    assert past["run_at"] == past["created_at"], "a past run_at means now"
    plain = await _submit(api)
    assert (plain["timeout_s"], plain["tags"]) == (None, {})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00Z", "delay_ms": 5}, "delay_ms"),
        ({"run_at": "2030-01-01 00:00:00"}, "run_at"),
        ({"run_at": "2030-02-30T00:00:00Z"}, "run_at"),
        ({"run_at": 1893456000}, "run_at"),
        ({"run_at": "0001-01-01T00:00:00+14:00"}, "run_at"),  # before year 1 in UTC
        ({"run_at": "9999-12-31T23:59:59-14:00"}, "run_at"),  # after year 9999 in UTC
        ({"delay_ms": -1}, "delay_ms"),
        ({"delay_ms": 31_536_000_001}, "delay_ms"),
        ({"delay_ms": 1.5}, "delay_ms"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 86_401}, "timeout_s"),
        ({"timeout_s": "5"}, "timeout_s"),
        ({"tags": {"a:b": "x"}}, "tags"),
        ({"tags": {"": "x"}}, "tags"),
        ({"tags": {"k": 1}}, "tags"),
        ({"tags": {"k": "v" * 513}}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "tags"),
        ({"tags": ["k", "v"]}, "tags"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
async def test_bad_options_are_422_naming_the_field(
    api: falcon.testing.ASGIConductor, database_url: str, body: dict[str, Any], field: str
) -> None:
    result = await api.simulate_post(TASKS, json={"type": "demo", **body})
    doc = assert_problem(result, 422, "validation_error")
    assert field in [e["field"] for e in doc["errors"]], doc
    assert await count_tasks(database_url) == 0


# -- batch --------------------------------------------------------------------------------


async def test_batch_of_1000_is_one_statement_in_request_order(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    specs = [
        {"type": f"demo.{i}", "payload": {"i": i}, "tags": {"n": str(i % 3)}} for i in range(1000)
    ]
    result = await api.simulate_post(BATCH, json={"tasks": specs})
    assert result.status_code == 201, result.text
    items = result.json["items"]
    assert [item["task"]["type"] for item in items] == [s["type"] for s in specs]
    assert all(item["created"] for item in items)
    assert len({item["task"]["id"] for item in items}) == 1000
    # One transaction (one xmin) and one statement in it (one command id, cmin).
    stats = await db.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT xmin::text) AS xacts, "
        "count(DISTINCT cmin::text) AS statements FROM tasks"
    )
    assert (stats["n"], stats["xacts"], stats["statements"]) == (1000, 1, 1)


async def test_a_bad_item_rejects_the_whole_batch(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    specs: list[dict[str, Any]] = [{"type": "demo"} for _ in range(10)]
    specs[7] = {"type": "demo", "priority": "urgent"}
    specs[9] = {"type": "demo", "payload": {"s": "nul \u0000"}}
    doc = assert_problem(
        await api.simulate_post(BATCH, json={"tasks": specs}), 422, "validation_error"
    )
    assert doc["index"] == 7
    assert [e["field"] for e in doc["errors"]] == ["tasks[7].priority"]
    specs[7] = {"type": "demo"}
    doc = assert_problem(
        await api.simulate_post(BATCH, json={"tasks": specs}), 422, "validation_error"
    )
    assert (doc["index"], [e["field"] for e in doc["errors"]]) == (9, ["tasks[9].payload.s"])
    assert await count_tasks(database_url) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": [{"type": "demo"}] * 1001}, "tasks"),
        ({}, "tasks"),
        ({"tasks": [{"type": "demo"}], "extra": 1}, "extra"),
    ],
)
async def test_batch_shape_errors_have_no_index(
    api: falcon.testing.ASGIConductor, body: dict[str, Any], field: str
) -> None:
    doc = assert_problem(await api.simulate_post(BATCH, json=body), 422, "validation_error")
    assert field in [e["field"] for e in doc["errors"]]
    assert "index" not in doc


async def test_batch_items_replay_their_idempotency_keys(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    first = await api.simulate_post(
        TASKS, json={"type": "demo", "payload": {"a": 1}}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 201
    batch = await api.simulate_post(
        BATCH,
        json={
            "tasks": [
                {"type": "demo", "payload": {"a": 1}, "idempotency_key": "k1"},
                {"type": "demo", "payload": {"b": 2}, "idempotency_key": "k2"},
                {"type": "demo", "payload": {"b": 2}, "idempotency_key": "k2"},
                {"type": "demo"},
            ]
        },
    )
    assert batch.status_code == 201, batch.text
    items = batch.json["items"]
    assert [i["created"] for i in items] == [False, True, False, True]
    assert items[0]["task"]["id"] == first.json["task"]["id"]
    assert items[1]["task"]["id"] == items[2]["task"]["id"]
    assert await count_tasks(database_url) == 3
    # A key reused with another spec: 409 naming the item, and nothing of the batch stays.
    conflict = await api.simulate_post(
        BATCH,
        json={
            "tasks": [
                {"type": "demo", "idempotency_key": "k3"},
                {"type": "demo", "payload": {"other": True}, "idempotency_key": "k2"},
            ]
        },
    )
    doc = assert_problem(conflict, 409, "idempotency_key_reused")
    assert doc["index"] == 1
    inside = await api.simulate_post(
        BATCH,
        json={
            "tasks": [
                {"type": "demo", "idempotency_key": "k4"},
                {"type": "demo.other", "idempotency_key": "k4"},
            ]
        },
    )
    assert assert_problem(inside, 409, "idempotency_key_reused")["index"] == 1
    assert await count_tasks(database_url) == 3


async def test_batch_takes_bodies_above_the_single_submit_limit(
    api_env: dict[str, str], database_url: str
) -> None:
    settings = settings_from(api_env, MAX_BODY_BYTES="4096", MAX_BATCH_BODY_BYTES="65536")
    async with falcon.testing.ASGIConductor(create_app(settings)) as client:
        big = {"type": "demo", "payload": "x" * 5000}
        single = await client.simulate_post(TASKS, json=big)
        assert_problem(single, 413, "payload_too_large")
        batch = await client.simulate_post(BATCH, json={"tasks": [big] * 10})
        assert batch.status_code == 201, batch.text
        huge = await client.simulate_post(BATCH, json={"tasks": [big] * 20})
        assert_problem(huge, 413, "payload_too_large")
    assert await count_tasks(database_url) == 10


# -- tag filters ----------------------------------------------------------------------------


async def test_list_filters_by_every_given_tag(api: falcon.testing.ASGIConductor) -> None:
    a = await _submit(api, tags={"team": "billing", "env": "prod"})
    b = await _submit(api, tags={"team": "billing", "env": "dev", "url": "http://x:1"})
    await _submit(api, tags={"team": "search"})

    async def ids(query: str) -> set[str]:
        result = await api.simulate_get(TASKS, query_string=query)
        assert result.status_code == 200, result.text
        return {t["id"] for t in result.json["items"]}

    assert await ids("tag=team:billing") == {a["id"], b["id"]}
    assert await ids("tag=team:billing&tag=env:prod") == {a["id"]}
    assert await ids("tag=url:http://x:1") == {b["id"]}, "the key ends at the first ':'"
    assert await ids("tag=env:prod&tag=env:dev") == set()
    assert await ids("tag=team:billing&status=queued&limit=1") <= {a["id"], b["id"]}
    for bad in ("tag=nocolon", "tag=:v", f"tag=k:{'v' * 513}"):
        doc = assert_problem(
            await api.simulate_get(TASKS, query_string=bad), 422, "validation_error"
        )
        assert doc["errors"][0]["field"] == "tag"


# -- cancel and retry ------------------------------------------------------------------------


async def test_cancel_a_queued_task(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api)
    result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert result.status_code == 200, result.text
    done = result.json["task"]
    assert (done["status"], done["version"]) == ("cancelled", task["version"] + 1)
    assert done["finished_at"] is not None
    row = await db.fetchrow(
        "SELECT dispatch_pending FROM tasks WHERE id = $1", uuid.UUID(task["id"])
    )
    assert row["dispatch_pending"] is False, "the dispatcher must never publish it"
    # A copy already on the bus cannot claim it.
    refusal = await claim_store.claim(db, uuid.UUID(task["id"]), 1, "w", 30.0)
    assert isinstance(refusal, claim_store.Refusal)
    assert refusal.verdict == "already_done"
    again = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert "cancelled" in assert_problem(again, 409, "invalid_state")["detail"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}/cancel"), 404, "not_found")
    assert_problem(await api.simulate_post(f"{TASKS}/nope/cancel"), 400, "invalid_id")


async def test_cancel_a_running_task_closes_its_attempt_and_tells_the_workers(
    api: falcon.testing.ASGIConductor,
    db: asyncpg.Connection,
    nats_server: NatsServer,
    stack_names: dict[str, str],
) -> None:
    names = Names(stack_names["NATS_STREAM_NAME"], "", stack_names["NATS_SUBJECT_PREFIX"], "")
    nc = await nats.connect(nats_server.url)
    heard: asyncio.Queue[CancelRequest] = asyncio.Queue()

    async def on_cancel(msg: Any) -> None:
        heard.put_nowait(CancelRequest.decode(msg.data))

    try:
        await nc.subscribe(names.cancel_subject, cb=on_cancel)
        await nc.flush()
        task = await _submit(api)
        claim = await _claim(db, task["id"])
        await _health_nats_ok(api)
        result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
        assert result.status_code == 200, result.text
        assert result.json["task"]["status"] == "cancelled"
        request = await asyncio.wait_for(heard.get(), 5)
        assert request.task_id == uuid.UUID(task["id"])
    finally:
        await nc.close()
    execution = await db.fetchrow(
        "SELECT status, error, finished_at FROM task_executions WHERE task_id = $1",
        claim.task_id,
    )
    assert (execution["status"], execution["error"]) == ("cancelled", "cancelled by request")
    assert execution["finished_at"] is not None
    # The worker's late success is fenced: the task stays cancelled.
    assert await attempts.succeed(db, claim.task_id, claim.attempt, "1") is False
    assert (await api.simulate_get(f"{TASKS}/{task['id']}")).json["task"]["status"] == "cancelled"


async def _health_nats_ok(client: falcon.testing.ASGIConductor) -> None:
    async def ok() -> bool:
        return bool((await client.simulate_get("/api/v1/health")).json["checks"]["nats"]["ok"])

    await wait_for(ok, 10, what="the API's NATS connection")


async def test_a_completion_that_commits_first_wins_over_cancel(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api)
    claim = await _claim(db, task["id"])
    assert await attempts.succeed(db, claim.task_id, claim.attempt, '{"ok": true}')
    result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert "completed" in assert_problem(result, 409, "invalid_state")["detail"]


async def test_retry_a_failed_task_keeps_its_history(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api, max_attempts=1)
    claim = await _claim(db, task["id"])
    failure = await attempts.fail(
        db,
        claim.task_id,
        claim.attempt,
        error="boom",
        error_type="RuntimeError",
        permanent=False,
        backoff_s=1,
    )
    assert failure is not None
    assert failure.status == "failed"
    result = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert result.status_code == 200, result.text
    retried = result.json["task"]
    assert (retried["status"], retried["attempts"], retried["failed_attempts"]) == ("queued", 1, 0)
    executions = (await api.simulate_get(f"{TASKS}/{task['id']}/executions")).json["items"]
    assert [(e["attempt"], e["status"]) for e in executions] == [(1, "failed")]
    # The next claim numbers on from the last attempt.
    row = await db.fetchrow("SELECT dispatch_seq FROM tasks WHERE id = $1", uuid.UUID(task["id"]))
    second = await claim_store.claim(db, claim.task_id, row["dispatch_seq"] + 1, "w", 30.0)
    assert isinstance(second, claim_store.Claim)
    assert second.attempt == 2
    again = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert "processing" in assert_problem(again, 409, "invalid_state")["detail"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}/retry"), 404, "not_found")


async def test_retry_a_cancelled_task(api: falcon.testing.ASGIConductor) -> None:
    task = await _submit(api)
    assert (await api.simulate_post(f"{TASKS}/{task['id']}/cancel")).status_code == 200
    result = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert result.status_code == 200, result.text
    assert result.json["task"]["status"] == "queued"
    assert result.json["task"]["finished_at"] is None


# -- the long poll -----------------------------------------------------------------------------


async def test_wait_answers_as_soon_as_the_task_finishes(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api)
    claim = await _claim(db, task["id"])
    started = time.monotonic()
    waiting = asyncio.create_task(
        api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=30s")
    )
    await _listening(api, waiters=1)
    assert not waiting.done()
    finished = time.monotonic()
    assert await attempts.succeed(db, claim.task_id, claim.attempt, '{"r": 1}')
    result = await asyncio.wait_for(waiting, 5)
    answered = time.monotonic()
    assert result.status_code == 200, result.text
    assert (result.json["task"]["status"], result.json["task"]["result"]) == ("completed", {"r": 1})
    assert answered - finished < 1.0, f"answered {answered - finished:.3f} s after the commit"
    assert answered - started < 10


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
            assert elapsed < 1.5, f"?wait=300ms took {elapsed:.2f} s behind a row lock"
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
        claim = await _claim(db, task["id"])
        assert await attempts.succeed(db, claim.task_id, claim.attempt, "1")
        done = await asyncio.wait_for(waiting, 5)
        assert done.json()["task"]["status"] == "completed"


async def test_wait_ends_with_the_current_state(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api)
    started = time.monotonic()
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=400ms")
    elapsed = time.monotonic() - started
    assert result.status_code == 200
    assert result.json["task"]["status"] == "queued"
    assert 0.4 <= elapsed < 2.0, elapsed
    # A change that is not the end does not answer early, but is what the wait ends with.
    await _claim(db, task["id"])
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=300ms")
    assert result.json["task"]["status"] == "processing"
    # Already finished: at once.
    await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    started = time.monotonic()
    result = await api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=60s")
    assert result.json["task"]["status"] == "cancelled"
    assert time.monotonic() - started < 1.0


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
    assert time.monotonic() - started < 1.0


async def test_waiters_survive_a_lost_listen_connection(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await _submit(api)
    claim = await _claim(db, task["id"])
    waiting = asyncio.create_task(
        api.simulate_get(f"{TASKS}/{task['id']}", query_string="wait=30s")
    )
    await _listening(api, waiters=1)
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    assert killed == 1
    # Finished while nobody listened: the reconnect wakes the waiter to re-read.
    assert await attempts.succeed(db, claim.task_id, claim.attempt, "null")
    result = await asyncio.wait_for(waiting, 10)
    assert result.json["task"]["status"] == "completed"
    await _listening(api)


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
                    claim = await _claim(db, task["id"])
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
        claim = await _claim(db, task["id"])
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


# -- the OpenAPI document ---------------------------------------------------------------------


async def test_openapi_document_describes_every_route(api: falcon.testing.ASGIConductor) -> None:
    result = await api.simulate_get("/api/v1/openapi.json")
    assert result.status_code == 200
    doc = result.json
    assert doc == document()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)  # validates the document itself
    documented = {(op.method.upper(), op.path) for op in _operations(schema)}
    routes = {
        (method.method, route.path)
        for route in falcon.inspect.inspect_routes(api.app.app)  # type: ignore[attr-defined]
        for method in route.methods
        if not method.internal
    }
    assert routes == documented
    codes = set(doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert codes == set(PROBLEM_CODES)


def _operations(schema: Any) -> list[Any]:
    out = []
    for result in schema.get_all_operations():
        operation = result.ok()
        out.append(operation)
    return out
