"""Postgres drops every connection (issue 11, item 10).

An operator's ``pg_terminate_backend`` on every TaskFlow backend (what a failover or a
pgbouncer restart does to the pools): a request that arrives within milliseconds must be
answered as an outage (503 ``unavailable``) or served on a fresh connection, never 500;
a worker or dispatcher that meets the dead connections neither books a failed attempt nor
stops its loops.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from tests.faults.conftest import MakeStack
from tests.support.invariants import check_invariants
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

ROUNDS = 20
"""Drops per test; each one races the requests in flight and those arriving right after."""
DROP_EVERY_S = 0.1
"""Spacing between two drops (part of the fault, not a synchronisation)."""
CLIENTS = 12
"""Concurrent client loops, one request at a time each: singles, batches and GETs."""
BATCH_SIZE = 3

_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


async def _drop_every_connection(admin: asyncpg.Connection) -> int:
    """Terminate every other client backend of this test's database; return how many."""
    return int(await admin.fetchval(_TERMINATE))


class _Load:
    """Client loops hammering the API; counts outcomes and the tasks answered as created."""

    def __init__(self, stack: Stack, known: str) -> None:
        self.stack = stack
        self.known = known
        self.outcomes: Counter[tuple[str, int, str | None]] = Counter()
        self.created = 0
        self.stop = asyncio.Event()

    async def _one(self, kind: str) -> None:
        http, url = self.stack.http, self.stack.api_url
        if kind == "get":
            resp = await http.get(f"{url}/tasks/{self.known}")
        elif kind == "single":
            resp = await http.post(f"{url}/tasks", json={"type": "demo", "payload": {"k": 1}})
        else:
            items = [{"type": "demo", "payload": {"j": j}} for j in range(BATCH_SIZE)]
            resp = await http.post(f"{url}/tasks/batch", json={"tasks": items})
        code = resp.json().get("code") if resp.status_code >= 400 else None
        self.outcomes[(kind, resp.status_code, code)] += 1
        if resp.status_code == 201:
            self.created += 1 if kind == "single" else len(resp.json()["items"])

    async def _client(self, kind: str) -> None:
        while not self.stop.is_set():
            await self._one(kind)

    async def run(self, admin: asyncpg.Connection) -> None:
        """Drop every connection ROUNDS times under load, then stop the clients."""
        kinds = ("single", "batch", "get")
        clients = [asyncio.create_task(self._client(kinds[i % 3])) for i in range(CLIENTS)]
        try:
            for _ in range(ROUNDS):
                await asyncio.sleep(DROP_EVERY_S)
                await _drop_every_connection(admin)
        finally:
            self.stop.set()
            await asyncio.gather(*clients)

    def unexpected(self) -> dict[tuple[str, int, str | None], int]:
        """Outcomes other than 200 (GET), 201 (POST) and 503 ``unavailable``."""
        fine = {("get", 200, None), ("single", 201, None), ("batch", 201, None)}
        return {
            k: n
            for k, n in self.outcomes.items()
            if k not in fine and k[1:] != (503, "unavailable")
        }


async def test_requests_right_after_every_connection_is_dropped(make_stack: MakeStack) -> None:
    """Every answer is 2xx or 503 ``unavailable``; tasks in the table == tasks answered 201."""
    stack = await make_stack(workers=0, dlq=False, env={"DB_POOL_MIN": "4"})
    known = (await stack.submit("demo", {"warm": True}))["id"]
    load = _Load(stack, known)
    admin = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await load.run(admin)
        # The pool replaced the dead connections: the API answers normally again.
        await wait_for(lambda: stack.get(known), 10, what="the API to answer after the drops")
        in_table = await admin.fetchval("SELECT count(*) FROM tasks")
    finally:
        await admin.close()
    assert load.unexpected() == {}, load.outcomes
    assert in_table == load.created + 1, (in_table, load.created, load.outcomes)
    assert stack.api is not None
    assert stack.api.running


async def test_dropped_connections_cost_no_attempt_and_stop_no_loop(
    make_stack: MakeStack,
) -> None:
    """Drops while the dispatcher publishes and workers claim, renew and record.

    ``max_attempts=1``: a dropped connection booked as a failed attempt would fail its
    task. Every task must complete with one succeeded execution, and every process must
    still run (no loop died of the drops).
    """
    stack = await make_stack(
        workers=2,
        env={"DB_POOL_MIN": "4", "WORKER_MAX_ATTEMPTS": "1"},
        worker_env={"WORKER_CONCURRENCY": "4"},
    )
    # Short handlers, many tasks: claims, renewals and results hit the pools constantly.
    items = [{"type": "test.sleep", "payload": {"sleep_s": 0.01 * (i % 4)}} for i in range(300)]
    resp = await stack.http.post(f"{stack.api_url}/tasks/batch", json={"tasks": items})
    assert resp.status_code == 201, resp.text
    ids = [item["task"]["id"] for item in resp.json()["items"]]
    admin = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        for _ in range(ROUNDS * 2):
            await asyncio.sleep(DROP_EVERY_S)
            await _drop_every_connection(admin)
            if await admin.fetchval("SELECT count(*) FROM tasks WHERE status = 'queued'") == 0:
                break
        await stack.wait_all(ids, timeout=60)
        failed = await admin.fetch(
            """SELECT task_id, attempt, status, error FROM task_executions
                WHERE status <> 'succeeded' ORDER BY task_id, attempt"""
        )
    finally:
        await admin.close()
    assert [dict(r) for r in failed] == []
    report = await check_invariants(stack, ids, deadline_s=15)
    report.assert_ok()
    assert report.statuses["completed"] == len(ids), report.statuses
    procs = [stack.api, stack.dispatcher, *stack.workers]
    assert all(p is not None and p.running for p in procs), procs
