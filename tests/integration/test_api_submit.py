"""Submitting one task in-process: the happy path, every bad input, idempotency, options.

The app runs through ``falcon.testing.ASGIConductor`` on the harness's Postgres and NATS
(``api`` fixture, ``tests/integration/conftest.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import httpx
import pytest

from taskflow_ingest_api.app import create_app
from tests.support import contract
from tests.support.api import (
    JSON,
    TASKS,
    assert_problem,
    conductor,
    count_tasks,
    fetch_row,
    serving,
    settings_from,
    submit_task,
)

# -- the happy path -------------------------------------------------------------------------------


async def test_submit_get_executions_and_list(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    result = await api.simulate_post(
        TASKS, json={"type": "demo", "payload": {"x": 1, "s": "é✓"}, "priority": "high"}
    )
    assert result.status_code == 201, result.text
    task = result.json["task"]
    assert set(task) == set(contract.task_fields().names), "README.md's task fields"
    assert task["type"] == "demo"
    assert task["payload"] == {"x": 1, "s": "é✓"}
    assert task["priority"] == "high"
    assert task["status"] == "queued"
    assert task["attempts"] == 0
    assert task["max_attempts"] == 3
    assert task["version"] == 1
    assert task["last_error"] is None
    assert task["result"] is None
    assert task["started_at"] is None
    assert task["finished_at"] is None
    created = dt.datetime.fromisoformat(task["created_at"].replace("Z", "+00:00"))
    assert task["created_at"].endswith("Z")
    assert abs(created - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=60)
    assert task["updated_at"] == task["created_at"]
    assert result.headers["location"] == f"{TASKS}/{task['id']}"
    assert "idempotent-replayed" not in result.headers

    row = await fetch_row(
        database_url,
        "SELECT status, dispatch_pending, run_at <= now() AS due FROM tasks WHERE id = $1",
        uuid.UUID(task["id"]),
    )
    assert row is not None
    assert (row["status"], row["dispatch_pending"], row["due"]) == ("queued", True, True)

    got = await api.simulate_get(result.headers["location"])
    assert got.status_code == 200
    assert got.json == {"task": task}

    runs = await api.simulate_get(f"{TASKS}/{task['id']}/executions")
    assert runs.status_code == 200
    assert runs.json == {"items": []}

    listed = await api.simulate_get(TASKS)
    assert listed.status_code == 200
    assert listed.json["items"] == [task]
    assert listed.json["next_cursor"] is None


async def test_max_attempts_default_comes_from_config(
    api_env: dict[str, str], database_url: str
) -> None:
    async with conductor(settings_from(api_env, WORKER_MAX_ATTEMPTS="7")) as client:
        result = await client.simulate_post(TASKS, json={"type": "demo"})
        assert result.json["task"]["max_attempts"] == 7
        result = await client.simulate_post(TASKS, json={"type": "demo", "max_attempts": 1})
        assert result.json["task"]["max_attempts"] == 1


async def test_payload_round_trips_through_jsonb(api: falcon.testing.ASGIConductor) -> None:
    payload = {
        "ints": [0, -1, 2**63 - 1, -(2**63)],
        "floats": [1.5, -0.25, 1e300, 1e-300],
        "text": 'tab\tnewline\n quote" backslash\\ emoji 🎉 \u0001',
        "nested": {"a": [{"b": [None, True, False]}]},
        "empty": [{}, []],
    }
    result = await api.simulate_post(TASKS, json={"type": "t", "payload": payload})
    assert result.status_code == 201, result.text
    got = await api.simulate_get(result.headers["location"])
    assert got.json["task"]["payload"] == payload


@pytest.mark.parametrize("payload", [None, [], "text", 42, True])
async def test_any_json_value_is_a_payload(
    api: falcon.testing.ASGIConductor, payload: object
) -> None:
    result = await api.simulate_post(TASKS, json={"type": "t", "payload": payload})
    assert result.status_code == 201, result.text
    assert result.json["task"]["payload"] == payload


async def test_charset_parameter_is_accepted(api: falcon.testing.ASGIConductor) -> None:
    result = await api.simulate_post(
        TASKS,
        body=b'{"type": "demo"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert result.status_code == 201, result.text


# -- every bad input: its status and code, and nothing created ------------------------------------

DEEP_65 = b"[" * 65 + b"]" * 65
DEEP_10K = b"[" * 10_000 + b"]" * 10_000
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LATIN1 = {"Content-Type": "application/json; charset=latin-1"}
TEXT = {"Content-Type": "text/plain"}


CODES = {400: "invalid_json", 413: "payload_too_large", 415: "unsupported_media_type"}


def bad(
    name: str, body: bytes, status: int, field: str | None = None, headers: dict[str, str] = JSON
) -> Any:
    """One row of the bad-input table: what is sent, the status and the field named.

    The code follows from the status (422 is always ``validation_error``).
    """
    code = CODES.get(status, "validation_error")
    return pytest.param(body, headers, status, code, field, id=name)


A = b'{"type": "a", '
BAD_INPUTS = [
    bad("malformed", b'{"type": "demo",', 400),
    bad("empty", b"", 400),
    bad("whitespace", b"  \n", 400),
    bad("not-utf8", b'{"type": "\xff"}', 400),
    bad("array", b'[{"type": "demo"}]', 422, "body"),
    bad("string", b'"demo"', 422, "body"),
    bad("null", b"null", 422, "body"),
    bad("text-plain", b'{"type": "demo"}', 415, headers=TEXT),
    bad("form", b"type=demo", 415, headers=FORM),
    bad("no-content-type", b'{"type": "demo"}', 415, headers={}),
    bad("latin1", b'{"type": "demo"}', 415, headers=LATIN1),
    bad("type-missing", b'{"payload": {}}', 422, "type"),
    bad("type-empty", b'{"type": ""}', 422, "type"),
    bad("type-129", b'{"type": "' + b"a" * 129 + b'"}', 422, "type"),
    bad("type-space", b'{"type": "a b"}', 422, "type"),
    bad("type-number", b'{"type": 7}', 422, "type"),
    bad("priority-urgent", A + b'"priority": "urgent"}', 422, "priority"),
    bad("priority-HIGH", A + b'"priority": "HIGH"}', 422, "priority"),
    bad("priority-1", A + b'"priority": 1}', 422, "priority"),
    bad("priority-list", A + b'"priority": ["high"]}', 422, "priority"),
    bad("max-attempts-0", A + b'"max_attempts": 0}', 422, "max_attempts"),
    bad("max-attempts-101", A + b'"max_attempts": 101}', 422, "max_attempts"),
    bad("max-attempts-str", A + b'"max_attempts": "3"}', 422, "max_attempts"),
    bad("unknown-field", A + b'"priorty": "high"}', 422, "priorty"),
    bad("payload-nul", A + b'"payload": {"s": "a\\u0000b"}}', 422, "payload.s"),
    bad("payload-nul-key", A + b'"payload": {"\\u0000": 1}}', 422, "payload.\x00"),
    bad("payload-1e400", A + b'"payload": {"n": 1e400}}', 422, "payload.n"),
    bad("payload-nan", A + b'"payload": [NaN]}', 422, "payload[0]"),
    bad("payload-int64+1", A + b'"payload": 9223372036854775808}', 422, "payload"),
    bad("payload-depth-65", A + b'"payload": ' + DEEP_65 + b"}", 422, "payload" + "[0]" * 64),
    bad("payload-depth-10k", A + b'"payload": ' + DEEP_10K + b"}", 422, "payload"),
    bad(
        "idem-key-256",
        b'{"type": "a"}',
        422,
        "Idempotency-Key",
        {**JSON, "Idempotency-Key": "k" * 256},
    ),
    bad(
        "idem-key-empty", b'{"type": "a"}', 422, "Idempotency-Key", {**JSON, "Idempotency-Key": ""}
    ),
    bad("over-1MiB", A + b'"payload": "' + b"x" * (1024 * 1024) + b'"}', 413),
]


@pytest.mark.parametrize(("body", "headers", "status", "code", "field"), BAD_INPUTS)
async def test_bad_input_gets_its_status_and_code_and_creates_nothing(
    api: falcon.testing.ASGIConductor,
    database_url: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    await api.simulate_post(TASKS, json={"type": "control"})  # the table is not empty
    before = await count_tasks(database_url)
    result = await api.simulate_post(TASKS, body=body, headers=headers)
    doc = assert_problem(result, status, code)
    if field is not None:
        assert field in [e["field"] for e in doc["errors"]], doc
        assert field.split(".")[0].split("[")[0] in doc["detail"]
    if field == "priority":
        assert "high, normal, low" in doc["detail"]
    assert await count_tasks(database_url) == before


async def test_problem_lists_every_bad_field(api: falcon.testing.ASGIConductor) -> None:
    result = await api.simulate_post(
        TASKS, json={"type": "", "priority": "x", "max_attempts": 0, "extra": 1}
    )
    doc = assert_problem(result, 422, "validation_error")
    assert sorted(e["field"] for e in doc["errors"]) == [
        "extra",
        "max_attempts",
        "priority",
        "type",
    ]
    assert all(e["message"] for e in doc["errors"])


# -- idempotency ----------------------------------------------------------------------------------


async def test_same_key_same_body_replays_the_task(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await api.simulate_post(
        TASKS, json={"type": "mail", "payload": {"to": "a", "n": 1}}, headers=headers
    )
    assert first.status_code == 201
    # Same request: key order and an explicit default do not make it different.
    again = await api.simulate_post(
        TASKS,
        json={"payload": {"n": 1, "to": "a"}, "type": "mail", "priority": "normal"},
        headers=headers,
    )
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json == first.json
    assert again.headers["location"] == first.headers["location"]
    assert await count_tasks(database_url) == 1


async def test_same_key_different_body_is_409(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    headers = {"Idempotency-Key": "order-18"}
    first = await api.simulate_post(TASKS, json={"type": "mail", "payload": 1}, headers=headers)
    assert first.status_code == 201
    for other in (
        {"type": "mail", "payload": 2},
        {"type": "sms", "payload": 1},
        {"type": "mail", "payload": 1, "priority": "high"},
        {"type": "mail", "payload": 1, "max_attempts": 9},
    ):
        result = await api.simulate_post(TASKS, json=other, headers=headers)
        doc = assert_problem(result, 409, "idempotency_key_reused")
        assert "order-18" in doc["detail"]
    assert await count_tasks(database_url) == 1
    # Without the key the same body is simply another task.
    assert (await api.simulate_post(TASKS, json={"type": "mail", "payload": 2})).status_code == 201
    assert await count_tasks(database_url) == 2


async def test_concurrent_posts_with_one_key_create_one_row(
    api_env: dict[str, str], database_url: str
) -> None:
    app = create_app(settings_from(api_env, DB_POOL_MAX="20"))
    body = {"type": "charge", "payload": {"amount": 100}}
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def post(key: str) -> httpx.Response:
            return await http.post(TASKS, json=body, headers={"Idempotency-Key": key})

        pair = await asyncio.gather(post("pay-1"), post("pay-1"))
        crowd = await asyncio.gather(*(post("pay-2") for _ in range(20)))
    for responses in (pair, crowd):
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * (len(responses) - 1) + [201]
        assert len({r.json()["task"]["id"] for r in responses}) == 1
        replayed = [r for r in responses if r.status_code == 200]
        assert all(r.headers["idempotent-replayed"] == "true" for r in replayed)
    assert await count_tasks(database_url) == 2


# -- per-task options --------------------------------------------------------------------


async def test_options_are_stored_and_shown(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    task = await submit_task(
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
    delayed = await submit_task(api, delay_ms=90_000)
    row = await db.fetchrow(
        "SELECT run_at - created_at AS lag FROM tasks WHERE id = $1", uuid.UUID(delayed["id"])
    )
    assert row["lag"] == dt.timedelta(seconds=90)
    past = await submit_task(api, run_at="2001-01-01T00:00:00+02:00")
    assert past["run_at"] == past["created_at"], "a past run_at means now"
    plain = await submit_task(api)
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
