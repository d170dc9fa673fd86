"""Reading tasks in-process: ids and 404s, executions by attempt, listing, tag filters."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import pytest

from tests.support import contract
from tests.support.api import (
    TASKS,
    assert_problem,
    execute,
    submit_task,
)

# -- reads: ids, 404s, executions -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/executions"])
async def test_unknown_task_is_404_and_bad_id_is_400(
    api: falcon.testing.ASGIConductor, suffix: str
) -> None:
    assert_problem(await api.simulate_get(f"{TASKS}/{uuid.uuid4()}{suffix}"), 404, "not_found")
    for bad in ["42", "not-a-uuid", "0" * 32, "%00", "'; DROP TABLE tasks; --"]:
        assert_problem(await api.simulate_get(f"{TASKS}/{bad}{suffix}"), 400, "invalid_id")


async def test_executions_are_listed_by_attempt(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    task = (await api.simulate_post(TASKS, json={"type": "demo"})).json["task"]
    # What the worker writes (its own module owns that SQL); here only to read it back.
    for attempt, status in ((2, "succeeded"), (1, "failed")):
        await execute(
            database_url,
            "INSERT INTO task_executions (task_id, attempt, status, worker_id, error,"
            " finished_at, duration_ms, lease_expires_at)"
            " VALUES ($1, $2, $3, 'w-1', $4, now(), 12.5, now())",
            uuid.UUID(task["id"]),
            attempt,
            status,
            "boom" if status == "failed" else None,
        )
    result = await api.simulate_get(f"{TASKS}/{task['id']}/executions")
    assert result.status_code == 200
    items = result.json["items"]
    assert [(e["attempt"], e["status"], e["error"]) for e in items] == [
        (1, "failed", "boom"),
        (2, "succeeded", None),
    ]
    assert set(items[0]) == set(contract.execution_fields().names), "README.md's fields"
    assert items[0]["task_id"] == task["id"]
    assert items[0]["worker_id"] == "w-1"
    assert items[0]["duration_ms"] == 12.5
    assert items[0]["started_at"].endswith("Z")


# -- listing --------------------------------------------------------------------------------------


async def _submit_many(api: falcon.testing.ASGIConductor, n: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        result = await api.simulate_post(TASKS, json={"type": "demo", "payload": i, **fields})
        assert result.status_code == 201
        ids.append(result.json["task"]["id"])
    return ids


async def test_pagination_is_stable_under_inserts(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    await _submit_many(api, 25)
    conn = await asyncpg.connect(database_url)
    try:
        expected = [
            str(r["id"])
            for r in await conn.fetch("SELECT id FROM tasks ORDER BY created_at DESC, id DESC")
        ]
    finally:
        await conn.close()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        result = await api.simulate_get(TASKS, params=params)
        assert result.status_code == 200, result.text
        seen += [t["id"] for t in result.json["items"]]
        cursor = result.json["next_cursor"]
        pages += 1
        if cursor is None:
            break
        await _submit_many(api, 3)  # newer rows must not shift the pages still to come
    assert seen == expected
    assert pages == 3


async def test_list_filters_and_limits(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    highs = await _submit_many(api, 3, priority="high")
    lows = await _submit_many(api, 2, priority="low")
    others = [
        (await api.simulate_post(TASKS, json={"type": "report"})).json["task"]["id"]
        for _ in range(2)
    ]
    await execute(
        database_url, "UPDATE tasks SET status = 'failed' WHERE id = $1", uuid.UUID(lows[0])
    )

    async def ids(**params: str) -> list[str]:
        result = await api.simulate_get(TASKS, params=params)
        assert result.status_code == 200, result.text
        return [t["id"] for t in result.json["items"]]

    assert await ids(priority="high") == highs[::-1]
    assert await ids(type="report") == others[::-1]
    assert await ids(status="failed") == [lows[0]]
    assert await ids(status="queued", priority="low") == [lows[1]]
    assert await ids(status="failed", priority="low", type="demo") == [lows[0]]
    assert await ids(type="nobody") == []
    assert await ids(limit="2") == others[::-1]
    assert len(await ids(limit="200")) == 7
    page = (await api.simulate_get(TASKS, params={"limit": "2"})).json
    assert page["next_cursor"]
    rest = await ids(cursor=page["next_cursor"], limit="200")
    assert rest == (highs + lows)[::-1]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("limit=0", 422, "validation_error"),
        ("limit=201", 422, "validation_error"),
        ("limit=abc", 422, "validation_error"),
        ("status=done", 422, "validation_error"),
        ("priority=urgent", 422, "validation_error"),
        ("type=a%20b", 422, "validation_error"),
        ("bogus=1", 422, "validation_error"),
        ("cursor=garbage", 400, "invalid_cursor"),
        ("cursor=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 400, "invalid_cursor"),
    ],
)
async def test_bad_list_queries(
    api: falcon.testing.ASGIConductor, query: str, status: int, code: str
) -> None:
    doc = assert_problem(await api.simulate_get(TASKS, query_string=query), status, code)
    if status == 422:
        assert doc["errors"][0]["field"] == query.split("=")[0]


# -- tag filters ----------------------------------------------------------------------------


async def test_list_filters_by_every_given_tag(api: falcon.testing.ASGIConductor) -> None:
    a = await submit_task(api, tags={"team": "billing", "env": "prod"})
    b = await submit_task(api, tags={"team": "billing", "env": "dev", "url": "http://x:1"})
    await submit_task(api, tags={"team": "search"})

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
