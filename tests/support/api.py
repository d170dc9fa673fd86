"""The ingest API in-process for integration tests: settings, the app, helpers.

:func:`conductor` runs ``create_app`` through ``falcon.testing.ASGIConductor`` (its
lifespan opens the real pool and NATS connection); :func:`serving` serves it with
uvicorn on a free port for tests that need a socket. The rest are the calls tests make
against the app or its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import uvicorn

from taskflow_common.config import load
from taskflow_common.http import ASGIApp
from taskflow_common.store import claims as claim_store
from taskflow_ingest_api.app import create_app
from taskflow_ingest_api.resources import Deps
from taskflow_ingest_api.settings import ApiSettings
from tests.support.waiting import wait_for

JSON = {"Content-Type": "application/json"}
TASKS = "/api/v1/tasks"
BATCH = f"{TASKS}/batch"


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
    """Run ``sql`` on a fresh connection; return its first row (None if none)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, *args: Any) -> None:
    """Run one statement on a fresh connection."""
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


async def listening(client: falcon.testing.ASGIConductor, waiters: int = 0) -> None:
    """Wait until the API's LISTEN connection is up with at least ``waiters`` parked."""

    async def ready() -> bool:
        events = (await client.simulate_get("/api/v1/health")).json["checks"]["events"]
        return bool(events["ok"] and events["waiters"] >= waiters)

    await wait_for(ready, 10, what=f"LISTEN up with {waiters} waiters")


async def submit_task(client: falcon.testing.ASGIConductor, **body: Any) -> dict[str, Any]:
    """POST a ``demo`` task with ``body`` on top; assert 201; return the task JSON."""
    result = await client.simulate_post(TASKS, json={"type": "demo", **body})
    assert result.status_code == 201, result.text
    return result.json["task"]  # type: ignore[no-any-return]


async def claim_first(db: asyncpg.Connection, task_id: str) -> claim_store.Claim:
    """Claim the task as a worker would for its first dispatch."""
    claim = await claim_store.claim(db, uuid.UUID(task_id), 1, "test-worker", 30.0)
    assert isinstance(claim, claim_store.Claim), claim
    return claim
