"""Issue 3, acceptance 3 through the whole stack: dead-lettered, listed, replayed, run again."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


async def test_unknown_type_is_dead_lettered_listed_and_replayed(
    service_env: dict[str, str], services: ServiceFactory
) -> None:
    stack = await Stack(services, dict(service_env)).start(workers=1)
    try:
        task = await stack.submit("no-such-type", {"x": 1})
        failed = await stack.wait_status(task["id"], {"failed"}, timeout=30)
        assert "no-such-type" in failed["last_error"]

        async def listed() -> list[dict[str, Any]]:
            return [d for d in await stack.dead_letters() if d["task_id"] == task["id"]]

        first = await wait_for(listed, 15, what="the dead letter in the dlq-monitor")
        assert [(d["status"], d["attempts"], d["type"]) for d in first] == [
            ("open", 1, "no-such-type")
        ]
        assert first[0]["trace_id"]

        resp = await stack.http.post(f"{stack.dlq_url}/dlq/{task['id']}/replay")
        assert resp.status_code == 200, resp.text
        assert resp.json()["task"]["status"] == "queued"

        # It runs again (attempt 2, the handler is still missing) and is dead-lettered
        # again: a second dead letter, the first one marked replayed.
        async def two() -> list[dict[str, Any]]:
            items = await listed()
            return items if len(items) == 2 else []

        both = await wait_for(two, 30, what="the second dead letter after the replay")
        assert [(d["status"], d["attempts"]) for d in both] == [("open", 2), ("replayed", 1)]
        executions = await stack.executions(task["id"])
        assert [(e["attempt"], e["status"]) for e in executions] == [(1, "failed"), (2, "failed")]
        assert (await stack.get(task["id"]))["status"] == "failed"
    finally:
        await stack.close()
