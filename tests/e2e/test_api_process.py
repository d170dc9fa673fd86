"""The ingest API as a real process (``python -m taskflow_ingest_api``), as a user runs it."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from taskflow_devstack.servers import free_port
from tests.support.procs import ServiceFactory
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

# Fixture order: ``service_env`` (hence the database) before ``services``, so the
# services are stopped before the test's database is dropped.


async def test_demo_task_submitted_read_and_listed(
    service_env: dict[str, str], services: ServiceFactory
) -> None:
    api = await services.start("ingest-api", service_env)
    ready = api.events("service_ready")[-1]
    assert ready["port"] == int(service_env["HTTP_PORT"])
    base = f"http://127.0.0.1:{service_env['HTTP_PORT']}/api/v1"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def healthy() -> dict[str, Any] | None:
            response = await http.get("/health")
            assert response.status_code == 200
            doc: dict[str, Any] = response.json()
            return doc if doc["status"] == "ok" else None

        health = await wait_for(healthy, 15, what="health to be ok")
        assert health["checks"]["postgres"]["ok"] is True
        assert health["checks"]["nats"]["ok"] is True
        assert (await http.get("/ready")).status_code == 200

        created = await http.post(
            "/tasks", json={"type": "demo", "payload": {"x": 1}}, headers={"X-Request-Id": "e2e-1"}
        )
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "e2e-1"
        task = created.json()["task"]
        assert task["status"] == "queued"
        assert task["payload"] == {"x": 1}
        assert created.headers["location"] == f"/api/v1/tasks/{task['id']}"

        got = await http.get(f"/tasks/{task['id']}")
        assert got.status_code == 200
        assert got.json()["task"]["id"] == task["id"]
        assert got.json()["task"]["status"] in {"queued", "processing", "completed"}

        runs = await http.get(f"/tasks/{task['id']}/executions")
        assert runs.status_code == 200
        assert runs.json() == {"items": []}

        listed = await http.get("/tasks")
        assert [t["id"] for t in listed.json()["items"]] == [task["id"]]

        missing = await http.get("/tasks/not-a-uuid")
        assert missing.status_code == 400
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "invalid_id"

    submitted = api.events("task_submitted")
    assert [(e["task_id"], e["type"], e["priority"]) for e in submitted] == [
        (task["id"], "demo", "normal")
    ]
    assert submitted[0]["request_id"] == "e2e-1"
    assert await api.stop() == 0
    assert api.events("service_stopped")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_PORT", "abc"),
        ("HTTP_PORT", "70000"),
        ("MAX_BODY_BYTES", "1MB"),
        ("DB_ACQUIRE_TIMEOUT", "soon"),
    ],
)
async def test_malformed_setting_exits_2_naming_the_variable(
    service_env: dict[str, str], services: ServiceFactory, variable: str, value: str
) -> None:
    api = await services.start("ingest-api", {**service_env, variable: value}, ready=False)
    assert await api.wait(15) == 2
    assert f"{variable}={value!r}" in api.logs()
    assert not api.events("service_ready")


@pytest.mark.service_errors(
    r"address already in use|\"event\":\"service_failed\"",
    "the test holds the port: uvicorn cannot bind, the service reports its failed start",
    service="ingest-api",
)
async def test_port_in_use_exits_1(service_env: dict[str, str], services: ServiceFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = await services.start(
            "ingest-api", {**service_env, "HTTP_PORT": str(port)}, ready=False
        )
        assert await api.wait(15) == 1
    assert api.events("service_failed")
    assert not api.events("service_ready")


async def test_starts_without_postgres_and_reports_not_ready(
    service_env: dict[str, str], services: ServiceFactory
) -> None:
    env = {**service_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none"}
    api = await services.start("ingest-api", env)
    base = f"http://127.0.0.1:{env['HTTP_PORT']}/api/v1"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "unavailable"
        submit = await http.post("/tasks", json={"type": "demo"})
        assert submit.status_code == 503
        health = await http.get("/health")
        assert health.status_code == 200
        assert health.json()["checks"]["postgres"]["ok"] is False
    assert await api.stop() == 0
