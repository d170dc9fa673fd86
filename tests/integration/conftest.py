"""Fixtures of the in-process API tests: ``api_env`` and ``api`` (the app, started)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import falcon.testing
import pytest

from taskflow_devstack.servers import NatsServer
from tests.support.api import conductor, listening, settings_from


@pytest.fixture
def api_env(
    database_url: str, nats_server: NatsServer, stack_names: dict[str, str]
) -> dict[str, str]:
    """Environment for an in-process API on this test's database and NATS."""
    return {"DATABASE_URL": database_url, "NATS_URL": nats_server.url, **stack_names}


@pytest.fixture
async def api(api_env: dict[str, str]) -> AsyncIterator[falcon.testing.ASGIConductor]:
    """The app with default settings on this test's database, its LISTEN connection up."""
    async with conductor(settings_from(api_env)) as client:
        await listening(client)
        yield client
