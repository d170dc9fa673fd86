"""The dlq-monitor as a real process through NATS and Postgres outages.

Dead letters published during an outage are recorded once the server is back; the
monitor starts with both servers down and begins consuming when they return. Postgres
is ``embedded_pg`` here (stopped and started by the test), even when the session uses
an external server.
"""

from __future__ import annotations

from typing import Any

import httpx
import nats.js.errors
import pytest

from taskflow_common import bus as bus_mod
from taskflow_common.config import CommonSettings, load
from taskflow_devstack.servers import NatsServer
from tests.support.dead_letters import (
    consumer_settled,
    dead_letter,
    insert_failed_task,
    listed,
    publish,
)
from tests.support.pg import PgHandle
from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.service_errors(
        r'"event":"Failed to restore the pool connection floor; retrying","logger":"asyncpg\.pool"',
        "the tests stop Postgres: asyncpg's pool logs each failed refill with its traceback",
        service="dlq-monitor",
    ),
]


@pytest.fixture
def database_url(embedded_database_url: str) -> str:
    """This module's databases live on a Postgres the tests may stop (``embedded_pg``)."""
    return embedded_database_url


async def test_survives_nats_restart_on_an_empty_store(
    monitor: ServiceProcess,
    nats_server: NatsServer,
    http: httpx.AsyncClient,
    settings: CommonSettings,
    database_url: str,
) -> None:
    nats_server.restart(clear_store=True)  # streams and consumer are gone

    async with bus_mod.connect(settings, "test-publisher") as b:
        # The monitor recreates the streams and its consumer by itself.
        async def recreated() -> bool:
            try:
                await b.js.consumer_info(b.names.dlq_stream, b.names.dlq_consumer)
            except nats.js.errors.NotFoundError:
                return False
            return True

        await wait_for(recreated, 20, interval=0.2, what="the monitor to recreate its consumer")
        task_id = await insert_failed_task(database_url)
        await publish(b, dead_letter(task_id).encode(), f"dlq:{task_id}:3")
        await wait_for(lambda: listed(http), 15, what="a dead letter after the NATS restart")
    assert monitor.running


async def test_survives_a_postgres_outage(
    monitor: ServiceProcess,
    bus: bus_mod.Bus,
    embedded_pg: PgHandle,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    pg = embedded_pg.require_embedded()
    task_id = await insert_failed_task(database_url)
    pg.stop()
    try:
        await publish(bus, dead_letter(task_id).encode(), f"dlq:{task_id}:3")

        async def reported() -> bool:
            resp = await http.get("/health")
            checks = resp.json()["checks"]
            return not checks["postgres"]["ok"] and resp.status_code == 200

        await wait_for(reported, 15, what="health to report postgres down")
        ready = await http.get("/ready")
        assert ready.status_code == 503
        listing = await http.get("/dlq")
        assert listing.status_code == 503
        assert listing.json()["code"] == "unavailable"
    finally:
        pg.start()
    await wait_for(lambda: listed(http), 20, what="the dead letter after Postgres returned")
    await wait_for(lambda: consumer_settled(bus), 10, what="the dead letter to be acked")
    assert monitor.running
    assert len(monitor.events("task_dead_lettered")) == 1


async def test_starts_while_postgres_and_nats_are_down(
    service_env: dict[str, str],
    services: ServiceFactory,
    nats_server: NatsServer,
    embedded_pg: PgHandle,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    pg = embedded_pg.require_embedded()
    task_id = await insert_failed_task(database_url)
    pg.stop()
    nats_server.stop()
    try:
        proc = await services.start("dlq-monitor", service_env, ready=False)

        async def answers() -> dict[str, Any] | None:
            resp = await http.get("/health")
            return resp.json() if resp.status_code == 200 else None

        health = await wait_for(answers, 15, ignore=(httpx.TransportError,), what="/health")
        assert health["status"] == "degraded"
        assert not health["checks"]["postgres"]["ok"]
        assert not health["checks"]["nats"]["ok"]
        assert proc.running
        assert not proc.events("service_ready")  # not consuming yet
    finally:
        nats_server.start()
        pg.start()
    await proc.wait_ready(20)
    async with bus_mod.connect(load(CommonSettings, service_env), "test-publisher") as b:
        await publish(b, dead_letter(task_id).encode(), f"dlq:{task_id}:3")
    await wait_for(lambda: listed(http), 15, what="the dead letter after both came back")
    assert (await http.get("/health")).json()["status"] == "ok"
