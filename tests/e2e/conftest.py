"""Fixtures shared by the end-to-end modules.

- ``one_slot_env`` / ``one_slot_stack``: a stack whose only worker has one slot. The
  cancel tests need exactly one (the next task runs right after a cancel only if the
  cancel freed it); the delayed-task and long-poll tests use the same stack.
- ``settings``, ``bus``, ``monitor``, ``http``: the dlq-monitor tests' settings, a bus
  connection with the streams ensured, the monitor process and a client of its API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from taskflow_common import bus as bus_mod
from taskflow_common.config import CommonSettings, load
from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.stack import Stack

ACK_WAIT_S = 30.0
"""The production default: leases are renewed every 10 s, so a handler stopped within a
second of a cancel was stopped by the cancel message, not by a lease renewal."""


@pytest.fixture
def one_slot_env(service_env: dict[str, str]) -> dict[str, str]:
    return service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_ACK_WAIT": f"{ACK_WAIT_S}s",
        "WORKER_BACKOFF_BASE": "0.2s",
        "WORKER_BACKOFF_MAX": "1s",
        "DISPATCHER_REAP_INTERVAL": "200ms",
    }


@pytest.fixture
async def one_slot_stack(
    one_slot_env: dict[str, str], services: ServiceFactory
) -> AsyncIterator[Stack]:
    """API, dispatcher and one worker with one slot (the cancel tests need exactly one)."""
    s = await Stack(services, one_slot_env).start(dlq=True, worker_env={"WORKER_CONCURRENCY": "1"})
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def settings(service_env: dict[str, str]) -> CommonSettings:
    """CommonSettings of this test's service environment."""
    return load(CommonSettings, service_env)


@pytest.fixture
async def bus(settings: CommonSettings) -> AsyncIterator[bus_mod.Bus]:
    """A bus connection of the test's own, streams and consumers ensured."""
    async with bus_mod.connect(settings, "test-publisher") as b:
        await b.ensure_streams()
        yield b


@pytest.fixture
async def monitor(service_env: dict[str, str], services: ServiceFactory) -> ServiceProcess:
    """The dlq-monitor, started and ready."""
    # service_env (and so the test database) first: the process stops before it is dropped.
    return await services.start("dlq-monitor", service_env)


@pytest.fixture
async def http(service_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client whose base URL is the dlq-monitor's ``/api/v1``."""
    base = f"http://127.0.0.1:{service_env['DLQ_HTTP_PORT']}/api/v1"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client
