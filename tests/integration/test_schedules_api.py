"""The schedules' REST routes against a real Postgres and NATS, the app in-process.

The dispatcher is not running here: what fires when is tests/e2e/test_schedules_rest.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import falcon.testing
import pytest

from tests.integration.test_ingest_api import (
    api_env,  # noqa: F401 - a fixture
    assert_problem,
    conductor,
    settings_from,
)

SCHEDULES = "/api/v1/schedules"
TASKS = "/api/v1/tasks"


@pytest.fixture
async def api(api_env: dict[str, str]) -> AsyncIterator[falcon.testing.ASGIConductor]:  # noqa: F811
    async with conductor(settings_from(api_env)) as client:
        yield client


async def counts(database_url: str) -> tuple[int, int]:
    """(schedules, tasks) rows: what "nothing stored" is checked against."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM schedules) AS s, (SELECT count(*) FROM tasks) AS t"
        )
        assert row is not None
        return int(row["s"]), int(row["t"])
    finally:
        await conn.close()


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def create(api: falcon.testing.ASGIConductor, **body: Any) -> dict[str, Any]:
    result = await api.simulate_post(SCHEDULES, json=body)
    assert result.status_code == 201, result.text
    schedule: dict[str, Any] = result.json["schedule"]
    assert result.headers["location"] == f"{SCHEDULES}/{body['name']}"
    return schedule


async def test_create_get_list_and_delete(api: falcon.testing.ASGIConductor) -> None:
    made = await create(
        api,
        name="berlin",
        cron="*/5 * * * *",
        timezone="Europe/Berlin",
        task={"type": "demo", "payload": {"x": 1}, "priority": "high", "tags": {"t": "1"}},
        missed="catch_up",
        catch_up_max=3,
        overlap="queue",
    )
    assert made["task"] == {
        "type": "demo",
        "payload": {"x": 1},
        "priority": "high",
        "tags": {"t": "1"},
        "max_attempts": None,
        "timeout_s": None,
    }
    assert (made["cron"], made["timezone"], made["every"]) == ("*/5 * * * *", "Europe/Berlin", None)
    assert (made["missed"], made["catch_up_max"], made["overlap"]) == ("catch_up", 3, "queue")
    assert when(made["next_fire_at"]).minute % 5 == 0
    assert made["last_fire_at"] is None
    assert made["last_run_status"] is None
    await create(api, name="often", every="30s", task={"type": "demo"})

    got = await api.simulate_get(f"{SCHEDULES}/often")
    assert got.status_code == 200
    assert got.json["schedule"]["every"] == "30s"
    assert got.json["schedule"]["every_s"] == 30
    assert got.json["schedule"]["timezone"] is None

    first = await api.simulate_get(SCHEDULES, params={"limit": "1"})
    assert [s["name"] for s in first.json["items"]] == ["berlin"]
    cursor = first.json["next_cursor"]
    second = await api.simulate_get(SCHEDULES, params={"limit": "1", "cursor": cursor})
    assert [s["name"] for s in second.json["items"]] == ["often"]
    assert second.json["next_cursor"] is None

    deleted = await api.simulate_delete(f"{SCHEDULES}/often")
    assert deleted.status_code == 204
    assert_problem(await api.simulate_get(f"{SCHEDULES}/often"), 404, "not_found")
    assert_problem(await api.simulate_delete(f"{SCHEDULES}/often"), 404, "not_found")


BAD = [
    ({"name": "x", "cron": "61 * * * *", "task": {"type": "demo"}}, "cron"),
    ({"name": "x", "cron": "not a cron", "task": {"type": "demo"}}, "cron"),
    ({"name": "x", "cron": "0 0 30 2 *", "task": {"type": "demo"}}, "cron"),
    (
        {"name": "x", "cron": "* * * * *", "timezone": "Mars/Olympus", "task": {"type": "demo"}},
        "timezone",
    ),
    ({"name": "x", "every": "500ms", "task": {"type": "demo"}}, "every"),
    ({"name": "x", "every": 0.5, "task": {"type": "demo"}}, "every"),
    ({"name": "x", "every": "soon", "task": {"type": "demo"}}, "every"),
    ({"name": "x", "task": {"type": "demo"}}, "cron"),
    ({"name": "x", "every": "1s", "cron": "* * * * *", "task": {"type": "demo"}}, "cron"),
    ({"name": "x", "every": "1s", "overlap": "sometimes", "task": {"type": "demo"}}, "overlap"),
    ({"name": "x", "every": "1s", "missed": "never", "task": {"type": "demo"}}, "missed"),
    ({"name": "x", "every": "1s", "catch_up_max": 0, "task": {"type": "demo"}}, "catch_up_max"),
    ({"name": "x y", "every": "1s", "task": {"type": "demo"}}, "name"),
    ({"name": "x", "every": "1s", "task": {"type": "de mo"}}, "task.type"),
    ({"name": "x", "every": "1s", "task": {"type": "demo", "payload": "\u0000"}}, "task.payload"),
    ({"name": "x", "every": "1s"}, "task"),
]


@pytest.mark.parametrize(("body", "field"), BAD)
async def test_bad_input_is_422_naming_the_field_and_stores_nothing(
    api: falcon.testing.ASGIConductor, database_url: str, body: dict[str, Any], field: str
) -> None:
    doc = assert_problem(await api.simulate_post(SCHEDULES, json=body), 422, "validation_error")
    assert field in [e["field"] for e in doc["errors"]], doc
    assert await counts(database_url) == (0, 0)


async def test_a_reused_name_is_409_and_changes_nothing(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    first = await create(api, name="dup", every="1m", task={"type": "demo"})
    again = await api.simulate_post(
        SCHEDULES, json={"name": "dup", "every": "5s", "task": {"type": "other"}}
    )
    assert_problem(again, 409, "schedule_exists")
    got = await api.simulate_get(f"{SCHEDULES}/dup")
    assert got.json["schedule"] == first
    assert await counts(database_url) == (1, 0)


async def test_unknown_names_are_404(api: falcon.testing.ASGIConductor) -> None:
    for method, path in [
        ("GET", "nope"),
        ("PATCH", "nope"),
        ("POST", "nope/pause"),
        ("POST", "nope/resume"),
        ("POST", "nope/run"),
        ("GET", "bad%00name"),
    ]:
        result = await api.simulate_request(
            method, f"{SCHEDULES}/{path}", json={} if method == "PATCH" else None
        )
        assert_problem(result, 404, "not_found")


async def test_patch_merges_and_retimes_only_when_the_cadence_changes(
    api: falcon.testing.ASGIConductor,
) -> None:
    made = await create(
        api, name="p", every="1h", task={"type": "demo", "payload": {"a": 1}, "max_attempts": 5}
    )
    path = f"{SCHEDULES}/p"
    changed = await api.simulate_patch(
        path, json={"task": {"payload": {"b": 2}}, "overlap": "skip"}
    )
    assert changed.status_code == 200, changed.text
    doc = changed.json["schedule"]
    assert doc["task"]["payload"] == {"b": 2}
    assert doc["task"]["max_attempts"] == 5
    assert doc["task"]["type"] == "demo"
    assert doc["overlap"] == "skip"
    assert doc["missed"] == "skip"
    assert doc["next_fire_at"] == made["next_fire_at"]  # not re-timed
    assert doc["version"] == made["version"] + 1

    cron = await api.simulate_patch(path, json={"cron": "0 9 * * *", "timezone": "Europe/Berlin"})
    doc = cron.json["schedule"]
    assert (doc["cron"], doc["timezone"], doc["every"]) == ("0 9 * * *", "Europe/Berlin", None)
    local = when(doc["next_fire_at"]).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert when(doc["next_fire_at"]) != when(made["next_fire_at"])
    assert local.minute == 0

    zone = await api.simulate_patch(path, json={"timezone": "UTC"})
    assert when(zone.json["schedule"]["next_fire_at"]).hour == 9

    back = await api.simulate_patch(path, json={"every": "10s"})
    doc = back.json["schedule"]
    assert (doc["cron"], doc["every"]) == (None, "10s")
    assert when(doc["next_fire_at"]) - when(doc["updated_at"]) <= dt.timedelta(seconds=10)

    bad = await api.simulate_patch(path, json={"timezone": "Europe/Berlin"})
    assert_problem(bad, 422, "validation_error")  # an interval has no zone
    assert_problem(await api.simulate_patch(path, json={"name": "q"}), 422, "validation_error")
    assert_problem(await api.simulate_patch(path, json={"every": "0s"}), 422, "validation_error")
    after = await api.simulate_get(path)
    assert after.json["schedule"] == doc  # nothing of the refused changes stored


async def test_pause_resume_and_run_now(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    made = await create(api, name="r", every="1h", task={"type": "demo", "payload": [1]})
    paused = await api.simulate_post(f"{SCHEDULES}/r/pause")
    assert paused.status_code == 200
    assert paused.json["schedule"]["paused"] is True
    again = await api.simulate_post(f"{SCHEDULES}/r/pause")
    assert again.json["schedule"]["version"] == paused.json["schedule"]["version"]
    listed = await api.simulate_get(SCHEDULES, params={"paused": "true"})
    assert [s["name"] for s in listed.json["items"]] == ["r"]

    run = await api.simulate_post(f"{SCHEDULES}/r/run")  # a paused schedule runs too
    assert run.status_code == 201, run.text
    task = run.json["task"]
    assert run.headers["location"] == f"{TASKS}/{task['id']}"
    assert (task["schedule"], task["type"], task["payload"]) == ("r", "demo", [1])
    assert task["scheduled_for"].endswith("Z")
    assert task["status"] == "queued"
    assert task["max_attempts"] == 3  # WORKER_MAX_ATTEMPTS

    resumed = await api.simulate_post(f"{SCHEDULES}/r/resume")
    doc = resumed.json["schedule"]
    assert doc["paused"] is False
    assert doc["next_fire_at"] == made["next_fire_at"]
    assert doc["last_task_id"] == task["id"]
    assert doc["last_run_status"] == "queued"
    assert doc["last_fire_at"] == task["scheduled_for"]

    one = await api.simulate_get(f"{TASKS}/{task['id']}")
    assert one.json["task"]["schedule"] == "r"
    assert one.json["task"]["scheduled_for"] == task["scheduled_for"]
    other = await api.simulate_post(TASKS, json={"type": "demo"})
    assert other.json["task"]["schedule"] is None
    assert other.json["task"]["scheduled_for"] is None
    mine = await api.simulate_get(TASKS, params={"schedule": "r"})
    assert [t["id"] for t in mine.json["items"]] == [task["id"]]
    nobody = await api.simulate_get(TASKS, params={"schedule": "unknown"})
    assert nobody.json["items"] == []
    bad = await api.simulate_get(TASKS, params={"schedule": "a b"})
    assert_problem(bad, 422, "validation_error")
    assert await counts(database_url) == (1, 2)


async def test_bad_list_queries(api: falcon.testing.ASGIConductor) -> None:
    for params in ({"paused": "maybe"}, {"limit": "0"}, {"limit": "201"}, {"x": "1"}):
        assert_problem(await api.simulate_get(SCHEDULES, params=params), 422, "validation_error")
    for cursor in ("!!", "AA", "eCB5"):  # not base64; "\x00"; "x y"
        result = await api.simulate_get(SCHEDULES, params={"cursor": cursor})
        assert_problem(result, 400, "invalid_cursor")
