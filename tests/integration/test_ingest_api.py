"""The ingest API against a real Postgres and NATS (the harness's), in-process.

Most tests drive the app through ``falcon.testing.ASGIConductor`` (its lifespan runs once
per test: the real pool and NATS connection are opened and closed). Tests that need a
socket (chunked uploads, concurrent requests) serve the same app with uvicorn on a free
port and talk to it with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import falcon.testing
import httpx
import orjson
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow_common.config import load
from taskflow_common.http import ASGIApp
from taskflow_devstack.servers import NatsServer, free_port
from taskflow_ingest_api.app import create_app
from taskflow_ingest_api.resources import Deps
from taskflow_ingest_api.settings import ApiSettings
from tests.support.waiting import wait_for

JSON = {"Content-Type": "application/json"}
TASKS = "/api/v1/tasks"
TASK_FIELDS = {
    "id",
    "type",
    "payload",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "version",
    "last_error",
    "result",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
}


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def api_env(
    database_url: str, nats_server: NatsServer, stack_names: dict[str, str]
) -> dict[str, str]:
    """Environment for an in-process API on this test's database and NATS."""
    return {"DATABASE_URL": database_url, "NATS_URL": nats_server.url, **stack_names}


def settings_from(env: Mapping[str, str], **extra: str) -> ApiSettings:
    """Build settings the way the service does (through the config loader)."""
    return load(ApiSettings, {**env, **extra})


@contextlib.asynccontextmanager
async def conductor(
    settings: ApiSettings, deps: Deps | None = None
) -> AsyncIterator[falcon.testing.ASGIConductor]:
    """An app from ``create_app`` with its lifespan started (and stopped on exit)."""
    async with falcon.testing.ASGIConductor(create_app(settings, deps)) as client:
        yield client


@pytest.fixture
async def api(api_env: dict[str, str]) -> AsyncIterator[falcon.testing.ASGIConductor]:
    """The app with default settings on this test's database."""
    async with conductor(settings_from(api_env)) as client:
        yield client


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the test process keeps pytest's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port; yield its base URL (``http://...``)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
    )
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), 15, what="uvicorn to start")
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def count_tasks(database_url: str) -> int:
    """Rows in ``tasks``: what "creates nothing" is checked against."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def fetch_row(database_url: str, sql: str, *args: Any) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def assert_problem(result: Any, status: int, code: str) -> dict[str, Any]:
    """Check a problem+json response; return its document."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = result.json
    assert doc["status"] == status
    assert doc["code"] == code
    assert doc["type"].endswith("/" + code)
    assert doc["title"]
    assert doc["detail"]
    assert "Traceback" not in result.text
    return doc


# -- the happy path -------------------------------------------------------------------------------


async def test_submit_get_executions_and_list(
    api: falcon.testing.ASGIConductor, database_url: str
) -> None:
    result = await api.simulate_post(
        TASKS, json={"type": "demo", "payload": {"x": 1, "s": "é✓"}, "priority": "high"}
    )
    assert result.status_code == 201, result.text
    task = result.json["task"]
    assert set(task) >= TASK_FIELDS
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
    assert set(items[0]) == {
        "id",
        "task_id",
        "attempt",
        "status",
        "worker_id",
        "error",
        "started_at",
        "finished_at",
        "duration_ms",
    }
    assert items[0]["task_id"] == task["id"]
    assert items[0]["worker_id"] == "w-1"
    assert items[0]["duration_ms"] == 12.5
    assert items[0]["started_at"].endswith("Z")


# -- X-Request-Id, 404 and 405 --------------------------------------------------------------------


async def test_request_id_is_echoed_on_every_response(api: falcon.testing.ASGIConductor) -> None:
    calls = [
        api.simulate_post(TASKS, json={"type": "demo"}, headers={"X-Request-Id": "rid-201"}),
        api.simulate_get("/nope", headers={"X-Request-Id": "rid-404"}),
        api.simulate_delete(TASKS, headers={"X-Request-Id": "rid-405"}),
        api.simulate_post(TASKS, body=b"{", headers={**JSON, "X-Request-Id": "rid-400"}),
        api.simulate_get("/api/v1/health", headers={"X-Request-Id": "rid-health"}),
    ]
    results = [await call for call in calls]
    assert [r.headers["x-request-id"] for r in results] == [
        "rid-201",
        "rid-404",
        "rid-405",
        "rid-400",
        "rid-health",
    ]
    assert [r.status_code for r in results] == [201, 404, 405, 400, 200]


async def test_unusable_request_ids_are_replaced(api: falcon.testing.ASGIConductor) -> None:
    seen = set()
    for given in [None, "", "has space", "x" * 201, "é"]:
        headers = {} if given is None else {"X-Request-Id": given}
        result = await api.simulate_get("/api/v1/health", headers=headers)
        rid = result.headers["x-request-id"]
        assert rid != given
        assert len(rid) == 32
        seen.add(rid)
    assert len(seen) == 5
    kept = await api.simulate_get("/api/v1/health", headers={"X-Request-Id": "A.b_c-9" * 28})
    assert kept.headers["x-request-id"] == "A.b_c-9" * 28


async def test_unknown_route_and_wrong_method_are_problems(
    api: falcon.testing.ASGIConductor,
) -> None:
    doc = assert_problem(await api.simulate_get("/api/v1/nothing-here"), 404, "not_found")
    assert "/api/v1/nothing-here" in doc["detail"]
    result = await api.simulate_put(TASKS, json={"type": "demo"})
    assert_problem(result, 405, "method_not_allowed")
    assert "POST" in result.headers["allow"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}"), 405, "method_not_allowed")


async def test_unexpected_database_error_is_a_bare_500(
    api: falcon.testing.ASGIConductor, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault, not a mock: the schema is gone under the running API.
    await execute(database_url, "DROP TABLE tasks CASCADE")
    result = await api.simulate_post(
        TASKS, json={"type": "demo"}, headers={"X-Request-Id": "rid-500"}
    )
    doc = assert_problem(result, 500, "internal_error")
    assert result.headers["x-request-id"] == "rid-500"
    assert "tasks" not in result.text
    assert "relation" not in result.text
    assert "asyncpg" not in result.text
    assert doc["detail"] == "the server could not handle the request"
    failed = [r for r in caplog.records if r.getMessage() == "request_failed"]
    assert failed
    assert failed[0].exc_info is not None


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


# -- body size limit over a real socket -----------------------------------------------------------


@dataclass
class RawResponse:
    """What a raw HTTP/1.1 exchange returned, and how much of the body had been sent."""

    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int


async def raw_post(base: str, head: dict[str, str], body: AsyncIterator[bytes]) -> RawResponse:
    """POST over a bare socket, reading the response while the body is still being sent.

    This is what curl does and what httpx does not: a server that answers 413 early and
    closes the connection is only visible to a client that reads while it writes.
    """
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {TASKS} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            async for chunk in body:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send())
    try:
        status_line, *header_lines = (
            (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        )
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, payload, sent)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def chunked(parts: list[bytes], repeat_last: int = 1) -> AsyncIterator[bytes]:
    """HTTP/1.1 chunked encoding of ``parts``, the last one sent ``repeat_last`` times."""
    for i, part in enumerate(parts):
        for _ in range(repeat_last if i == len(parts) - 1 else 1):
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


async def nothing() -> AsyncIterator[bytes]:
    """A body that never comes."""
    await asyncio.Event().wait()
    yield b""


async def test_oversized_bodies_are_413_without_reading_them(
    api_env: dict[str, str], database_url: str
) -> None:
    limit = 4096
    app = create_app(settings_from(api_env, MAX_BODY_BYTES=str(limit)))
    start, end = b'{"type": "a", "payload": "', b'"}'
    async with serving(app) as base:
        # Declared too large: answered from the headers alone, no body byte sent.
        declared = await raw_post(
            base,
            {**JSON, "Content-Length": str(10 * 1024 * 1024), "X-Request-Id": "big-1"},
            nothing(),
        )
        # Chunked, 64 MiB on its way: answered once the limit is crossed.
        total = 64 * 1024 * 1024
        stream = await raw_post(
            base,
            {**JSON, "Transfer-Encoding": "chunked", "X-Request-Id": "big-2"},
            chunked([start, b"x" * 65536], repeat_last=total // 65536),
        )
        # Chunked and within the limit: accepted.
        fits = await raw_post(
            base,
            {**JSON, "Transfer-Encoding": "chunked"},
            chunked([start, b"x" * 1000, b"x" * 1000, end]),
        )
    for response, rid in ((declared, "big-1"), (stream, "big-2")):
        assert response.status == 413, response
        assert response.headers["content-type"] == "application/problem+json"
        assert orjson.loads(response.body)["code"] == "payload_too_large"
        assert response.headers["x-request-id"] == rid
    assert declared.body_bytes_sent == 0
    assert stream.body_bytes_sent < total / 2, "the server read far past its limit"
    assert fits.status == 201, fits
    assert await count_tasks(database_url) == 1


# -- dependencies down: 503 quickly, health and readiness -----------------------------------------


async def test_health_and_ready_with_everything_up(api: falcon.testing.ASGIConductor) -> None:
    async def nats_ok() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await api.simulate_get("/api/v1/health")).json
        return doc if doc["checks"]["nats"]["ok"] and doc["checks"]["events"]["ok"] else None

    doc = await wait_for(nats_ok, 10, what="health to report NATS and LISTEN connected")
    assert doc["status"] == "ok"
    assert doc["checks"]["postgres"]["ok"] is True
    assert doc["checks"]["postgres"]["latency_ms"] >= 0
    assert doc["checks"]["nats"]["latency_ms"] >= 0
    ready = await api.simulate_get("/api/v1/ready")
    assert ready.status_code == 200
    assert ready.json == {"status": "ready"}


async def _assert_unavailable(client: falcon.testing.ASGIConductor, within_s: float) -> None:
    calls = [
        client.simulate_post(TASKS, json={"type": "demo"}),
        client.simulate_get(f"{TASKS}/{uuid.uuid4()}"),
        client.simulate_get(f"{TASKS}/{uuid.uuid4()}/executions"),
        client.simulate_get(TASKS),
        client.simulate_get("/api/v1/ready"),
    ]
    for call in calls:
        started = time.monotonic()
        result = await call
        elapsed = time.monotonic() - started
        doc = assert_problem(result, 503, "unavailable")
        assert elapsed < within_s, f"503 took {elapsed:.2f} s"
        assert result.headers["retry-after"] == "1"
        assert "127.0.0.1" not in doc["detail"]
        assert result.headers["x-request-id"]
    health = await client.simulate_get("/api/v1/health")
    assert health.status_code == 200
    assert health.json["status"] == "degraded"
    assert health.json["checks"]["postgres"]["ok"] is False
    assert "127.0.0.1" not in health.text


async def test_postgres_refusing_connections_gives_503_quickly(
    api_env: dict[str, str],
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/taskflow"
    async with conductor(settings_from(api_env, DATABASE_URL=closed)) as client:
        await _assert_unavailable(client, within_s=1.0)


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung Postgres)."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_postgres_not_answering_gives_503_within_the_acquire_timeout(
    api_env: dict[str, str],
) -> None:
    async with blackhole() as port:
        settings = settings_from(
            api_env,
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/taskflow",
            DB_ACQUIRE_TIMEOUT="300ms",
        )
        async with conductor(settings) as client:
            await _assert_unavailable(client, within_s=1.5)


# -- tracing --------------------------------------------------------------------------------------


async def test_request_span_continues_the_callers_trace_and_parents_the_task(
    api_env: dict[str, str], database_url: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = "00f067aa0ba902b7"
    deps = Deps(tracer=provider.get_tracer("test"))
    async with conductor(settings_from(api_env), deps) as client:
        result = await client.simulate_post(
            TASKS, json={"type": "demo"}, headers={"traceparent": f"00-{trace_id}-{caller}-01"}
        )
    assert result.status_code == 201
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["POST /api/v1/tasks"]
    insert = spans["INSERT tasks"]
    assert f"{request.context.trace_id:032x}" == trace_id
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == caller
    assert insert.parent is not None
    assert insert.parent.span_id == request.context.span_id
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    row = await fetch_row(
        database_url,
        "SELECT trace_parent FROM tasks WHERE id = $1",
        uuid.UUID(result.json["task"]["id"]),
    )
    assert row is not None
    assert row["trace_parent"] == f"00-{trace_id}-{request.context.span_id:016x}-01"
    provider.shutdown()
