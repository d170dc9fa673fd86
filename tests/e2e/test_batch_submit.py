"""A batch of 1,000 tasks end to end: one request, every task completes, in order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack, post

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(one_slot_env: dict[str, str]) -> dict[str, str]:
    """The one-slot stack's environment (``tests/e2e/conftest.py``)."""
    return one_slot_env


@pytest.fixture
def stack(one_slot_stack: Stack) -> Stack:
    """API, dispatcher, dlq-monitor and one worker with one slot (``tests/e2e/conftest.py``)."""
    return one_slot_stack


# -- batch ----------------------------------------------------------------------------------


async def test_a_batch_of_1000_in_one_request_all_complete(
    env: dict[str, str], services: ServiceFactory
) -> None:
    stack = await Stack(services, env).start(dlq=False, worker_env={"WORKER_CONCURRENCY": "64"})
    try:
        specs: list[dict[str, Any]] = [{"type": "demo", "payload": {"i": i}} for i in range(1000)]
        body = {"tasks": specs}
        resp = await post(stack, "/tasks/batch", json=body)
        assert resp.status_code == 201, resp.text
        ids = [item["task"]["id"] for item in resp.json()["items"]]
        assert len(set(ids)) == 1000
        assert await stack.db_value("SELECT count(*) FROM tasks") == 1000
        done = await stack.wait_all(ids, timeout=120)
        assert {t["status"] for t in done} == {"completed"}
        assert [t["result"] for t in done] == [{"i": i} for i in range(1000)]
        # A batch with one bad item creates nothing.
        body["tasks"][500] = {"type": "demo", "max_attempts": 0}
        bad = await post(stack, "/tasks/batch", json=body)
        assert bad.status_code == 422
        assert bad.json()["index"] == 500
        assert await stack.db_value("SELECT count(*) FROM tasks") == 1000
    finally:
        await stack.close()
