"""The ingest API with its dependencies up and down: health, readiness, 503 quickly."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import falcon.inspect
import falcon.testing

from taskflow_devstack.servers import free_port
from tests.support.api import (
    TASKS,
    assert_problem,
    conductor,
    settings_from,
)
from tests.support.timing import floor_plus, slack
from tests.support.waiting import wait_for

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
        await _assert_unavailable(client, within_s=slack(1.0))


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
            await _assert_unavailable(client, within_s=floor_plus(0.3, 1.2))
