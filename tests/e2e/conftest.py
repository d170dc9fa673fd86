"""Fixtures shared by the end-to-end modules: a stack whose only worker has one slot.

The cancel tests need exactly one slot (the next task runs right after a cancel only if
the cancel freed it); the delayed-task and long-poll tests use the same stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.procs import ServiceFactory
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
