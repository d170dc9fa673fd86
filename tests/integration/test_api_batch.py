"""``POST /api/v1/tasks/batch`` in-process: one statement, all or nothing, per-item keys."""

from __future__ import annotations

from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import pytest

from taskflow_ingest_api.app import create_app
from tests.support.api import (
    BATCH,
    TASKS,
    assert_problem,
    count_tasks,
    settings_from,
)

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
