"""Fixtures for the fault-injection scenarios (issue 4).

Clocks are the production defaults divided by ten, keeping their ratios: ``ack_wait``
3 s (30 s), shutdown grace 3 s (30 s), backoff base 0.5 s. A scenario that needs other
values says so and keeps the issue's ratios. Every service listens on 127.0.0.1.

``make_stack(...)`` starts a whole stack as real processes; the services are stopped by
the ``services`` fixture before this test's database is dropped (fixture order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack

ACK_WAIT_S = 3.0
GRACE_S = 3.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 3.0
MAX_ATTEMPTS = 3

MakeStack = Callable[..., Awaitable[Stack]]

CUT_POSTGRES = pytest.mark.service_errors(
    r'"event":"Failed to restore the pool connection floor; retrying","logger":"asyncpg\.pool"',
    "the test cuts a service off Postgres: its asyncpg pool logs each failed refill of its "
    "connection floor as a warning with the traceback",
)
"""What cutting a service off Postgres makes it log (declared by the tests that do)."""


def clock_env(
    *,
    ack_wait_s: float = ACK_WAIT_S,
    grace_s: float = GRACE_S,
    backoff_base_s: float = BACKOFF_BASE_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> dict[str, str]:
    """The scaled clock variables as an environment mapping."""
    return {
        "WORKER_ACK_WAIT": f"{ack_wait_s}s",
        "WORKER_SHUTDOWN_GRACE": f"{grace_s}s",
        "WORKER_BACKOFF_BASE": f"{backoff_base_s}s",
        "WORKER_BACKOFF_MAX": f"{backoff_max_s}s",
        "WORKER_MAX_ATTEMPTS": str(max_attempts),
    }


@pytest.fixture
def fault_env(service_env: dict[str, str]) -> dict[str, str]:
    """``service_env`` plus the test handlers and the scaled clocks."""
    return service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_CONCURRENCY": "4",
        "DISPATCHER_REAP_INTERVAL": "200ms",
        **clock_env(),
    }


@pytest.fixture
async def make_stack(
    fault_env: dict[str, str], services: ServiceFactory
) -> AsyncIterator[MakeStack]:
    """``await make_stack(workers=2, env={...}, worker_env={...}, dlq=True)``."""
    made: list[Stack] = []

    async def make(
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
        dlq: bool = True,
    ) -> Stack:
        stack = Stack(services, fault_env | dict(env or {}))
        made.append(stack)
        return await stack.start(workers=workers, dlq=dlq, worker_env=worker_env)

    try:
        yield make
    finally:
        for stack in made:
            await stack.close()


def worker_of(stack: Stack, worker_id: str) -> Any:
    """The worker process whose ``WORKER_ID`` is ``worker_id``."""
    for proc in stack.workers:
        if proc.env.get("WORKER_ID") == worker_id:
            return proc
    raise AssertionError(
        f"no worker {worker_id} in {[p.env.get('WORKER_ID') for p in stack.workers]}"
    )
