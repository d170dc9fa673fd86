"""The dlq-monitor as a real process against real NATS and Postgres.

Dead letters are published by hand (as the dispatcher and worker would), after
``ensure_streams()``; the monitor must record each once, survive garbage and outages, and
serve the API (list, stats, detail, replay, discard, health) with problem+json errors.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from taskflow_common import bus as bus_mod
from taskflow_common.subjects import Names
from tests.support.dead_letters import (
    consumer_settled,
    db_fetch,
    dead_letter,
    insert_failed_task,
    listed,
    publish,
)
from tests.support.procs import ServiceProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


async def test_dead_letter_recorded_once_despite_duplicates_and_redelivery(
    monitor: ServiceProcess,
    bus: bus_mod.Bus,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    task_id = await insert_failed_task(database_url)
    body = dead_letter(task_id).encode()
    msg_id = Names.dlq_msg_id(str(task_id), 3)
    await publish(bus, body, msg_id)
    await publish(bus, body, msg_id)  # deduplicated by the stream

    async def one_listed() -> list[dict[str, Any]]:
        return [d for d in await listed(http) if d["task_id"] == str(task_id)]

    items = await wait_for(one_listed, 10, what="the dead letter in GET /dlq")
    assert len(items) == 1
    item = items[0]
    assert item["type"] == "demo"
    assert item["priority"] == "high"
    assert item["attempts"] == 3
    assert item["error"] == "RuntimeError: boom"
    assert item["status"] == "open"
    assert item["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # from traceparent
    await wait_for(lambda: consumer_settled(bus), 10, what="the dead letter to be acked")

    # Force a real redelivery: drop the durable consumer under the running monitor. It
    # recreates the consumer (deliver all), so the stored message comes round again.
    await bus.js.delete_consumer(bus.names.dlq_stream, bus.names.dlq_consumer)

    async def redelivered() -> bool:
        resp = await http.get("/health")
        return bool(resp.json()["checks"]["consumer"]["duplicates"] >= 1)

    await wait_for(redelivered, 15, what="the monitor to see the redelivery")
    await wait_for(lambda: consumer_settled(bus), 10, what="the redelivery to be acked")
    assert len(await one_listed()) == 1
    assert len(await db_fetch(database_url, "SELECT id FROM dead_letters")) == 1
    warned = monitor.events("task_dead_lettered")
    assert len(warned) == 1
    line = warned[0]
    assert line["level"] == "warning"
    assert (line["task_id"], line["type"], line["attempts"]) == (str(task_id), "demo", 3)
    assert line["error"] == "RuntimeError: boom"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert monitor.running


async def test_garbage_is_recorded_not_fatal(
    monitor: ServiceProcess,
    bus: bus_mod.Bus,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    await publish(bus, b"\xff\x00 this is not json", "garbage-1", traceparent=None)
    await publish(bus, b'{"task_id": 17}', None)  # JSON, but not a dead letter; no msg id
    await publish(bus, b'{"reason": "x", "task_id": 5, "raw": 3}', "bad-fields")

    async def three() -> list[dict[str, Any]]:
        items = await listed(http, q="undecodable")
        return items if len(items) == 3 else []

    items = await wait_for(three, 10, what="three undecodable dead letters")
    assert {i["reason"] for i in items} == {"undecodable dead letter"}
    assert all(i["raw_bytes"] and i["task_id"] is None for i in items)
    await wait_for(lambda: consumer_settled(bus), 10, what="garbage to be acked")

    detail = await http.get(f"/dlq/{items[-1]['id']}")  # by the dead letter's own id
    assert detail.status_code == 200, detail.text
    kept = {d["raw"] for d in detail.json()["dead_letters"]}
    assert kept == {"/wAgdGhpcyBpcyBub3QganNvbg=="}  # base64 of the bytes sent
    assert detail.json()["task"] is None

    # Still consuming normally afterwards.
    task_id = await insert_failed_task(database_url)
    await publish(bus, dead_letter(task_id).encode(), Names.dlq_msg_id(str(task_id), 3))
    await wait_for(lambda: listed(http, type="demo"), 10, what="a real dead letter after garbage")
    assert monitor.running
    assert not monitor.events("service_failed")


async def test_replay_requeues_a_failed_task(
    monitor: ServiceProcess,
    bus: bus_mod.Bus,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    task_id = await insert_failed_task(database_url)
    await publish(bus, dead_letter(task_id).encode(), Names.dlq_msg_id(str(task_id), 3))
    await wait_for(lambda: listed(http, status="open"), 10, what="the dead letter")

    resp = await http.post(f"/dlq/{task_id}/replay", headers={"X-Request-Id": "replay-1"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Request-Id"] == "replay-1"
    body = resp.json()
    task = body["task"]
    assert task["id"] == str(task_id)
    assert task["status"] == "queued"
    assert task["failed_attempts"] == 0
    assert task["attempts"] == 3
    assert task["version"] == 2
    assert task["finished_at"] is None
    assert body["dead_letters_replayed"] == 1

    row = (await db_fetch(database_url, "SELECT * FROM tasks WHERE id = $1", task_id))[0]
    assert (row["status"], row["failed_attempts"], row["dispatch_pending"]) == ("queued", 0, True)
    assert [d["status"] for d in await listed(http)] == ["replayed"]
    assert await listed(http, status="open") == []

    again = await http.post(f"/dlq/{task_id}/replay")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["code"] == "invalid_state"
    assert again.json()["status"] == 409


async def test_api_detail_stats_discard_and_errors(
    monitor: ServiceProcess,
    bus: bus_mod.Bus,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    ids = [await insert_failed_task(database_url, type_=t) for t in ("a", "a", "b")]
    for task_id, t in zip(ids, ("a", "a", "b"), strict=True):
        await publish(bus, dead_letter(task_id, type_=t).encode(), f"dlq:{task_id}:3")

    async def all_three() -> bool:
        return len(await listed(http)) == 3

    await wait_for(all_three, 10, what="three dead letters")

    stats = (await http.get("/dlq/stats")).json()
    assert stats["total"]["1h"] == 3
    assert {t["type"]: t["counts"]["all"] for t in stats["by_type"]} == {"a": 2, "b": 1}

    page1 = (await http.get("/dlq", params={"limit": "2"})).json()
    assert len(page1["items"]) == 2
    page2 = (await http.get("/dlq", params={"limit": "2", "cursor": page1["next_cursor"]})).json()
    assert len(page2["items"]) == 1
    assert page2["next_cursor"] is None
    all_ids = [i["id"] for i in page1["items"] + page2["items"]]
    assert all_ids == [i["id"] for i in await listed(http)]

    detail = (await http.get(f"/dlq/{ids[2]}")).json()
    assert detail["task"]["id"] == str(ids[2])
    assert detail["task"]["status"] == "failed"
    assert detail["executions"] == []
    assert detail["dead_letters"][0]["type"] == "b"

    discarded = await http.post(f"/dlq/{ids[2]}/discard")
    assert discarded.status_code == 200, discarded.text
    assert [d["status"] for d in discarded.json()["items"]] == ["discarded"]
    assert [d["task_id"] for d in await listed(http, status="discarded")] == [str(ids[2])]
    assert (await http.post(f"/dlq/{ids[2]}/discard")).json()["code"] == "invalid_state"

    for path, status, code in [
        (f"/dlq/{uuid.uuid4()}", 404, "not_found"),
        ("/dlq/not-a-uuid", 400, "invalid_id"),
        ("/dlq?limit=0", 422, "validation_error"),
        ("/dlq?limit=abc", 422, "validation_error"),
        ("/dlq?status=gone", 422, "validation_error"),
        ("/dlq?cursor=bogus", 400, "invalid_cursor"),
        ("/nowhere", 404, "not_found"),
    ]:
        resp = await http.get(path)
        assert resp.status_code == status, (path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json"), path
        problem = resp.json()
        assert problem["code"] == code, path
        assert problem["status"] == status
        assert problem["type"] == f"https://taskflow.dev/problems/{code}"
        assert len(resp.headers["X-Request-Id"]) == 32
    bad = (await http.get("/dlq", params={"status": "gone", "limit": "500"})).json()
    assert {e["field"] for e in bad["errors"]} == {"status", "limit"}
    unknown_task = await http.post(f"/dlq/{uuid.uuid4()}/replay")
    assert unknown_task.status_code == 404
    wrong_method = await http.delete("/dlq")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert wrong_method.headers["X-Request-Id"]

    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert {k for k, v in health.json()["checks"].items() if v["ok"]} == {
        "postgres",
        "nats",
        "consumer",
    }
