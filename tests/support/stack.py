"""A whole TaskFlow stack as real processes, and the client calls tests make against it.

``Stack`` starts the ingest API, dispatcher, workers and dlq-monitor with one shared
environment (this test's database, NATS and unique names) and offers the calls a user
would make: submit over REST, read a task and its executions, list dead letters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_for

TERMINAL = {"completed", "failed", "cancelled"}


def parse_ts(value: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 ``...Z`` timestamp from the API."""
    if value is None:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Stack:
    """Services of one test plus clients for them."""

    services: ServiceFactory
    env: dict[str, str]
    workers: list[ServiceProcess] = field(default_factory=list)
    api: ServiceProcess | None = None
    dispatcher: ServiceProcess | None = None
    dlq: ServiceProcess | None = None
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    @property
    def api_url(self) -> str:
        """Base URL of the ingest API."""
        return f"http://127.0.0.1:{self.env['HTTP_PORT']}/api/v1"

    @property
    def dlq_url(self) -> str:
        """Base URL of the dlq-monitor's API."""
        return f"http://127.0.0.1:{self.env['DLQ_HTTP_PORT']}/api/v1"

    async def start(
        self, *, workers: int = 1, dlq: bool = True, worker_env: Mapping[str, str] | None = None
    ) -> Stack:
        """Start API, dispatcher, ``workers`` workers and (optionally) the dlq-monitor."""
        starts = [
            self.services.start("ingest-api", self.env),
            self.services.start("dispatcher", self.env),
        ]
        if dlq:
            starts.append(self.services.start("dlq-monitor", self.env))
        started = await asyncio.gather(*starts)
        self.api, self.dispatcher = started[0], started[1]
        self.dlq = started[2] if dlq else None
        for _ in range(workers):
            await self.start_worker(worker_env)
        return self

    async def start_worker(
        self, extra: Mapping[str, str] | None = None, *, ready: bool = True
    ) -> ServiceProcess:
        """Start one more worker process (``extra`` overrides env vars)."""
        n = len(self.workers)
        env = {**self.env, "WORKER_ID": f"worker-{n}", **(extra or {})}
        proc = await self.services.start("worker", env, ready=ready)
        self.workers.append(proc)
        return proc

    async def close(self) -> None:
        """Close the HTTP client (processes are stopped by the ``services`` fixture)."""
        await self.http.aclose()

    # -- REST calls -------------------------------------------------------------------------

    async def submit(
        self,
        type_: str,
        payload: Any = None,
        *,
        priority: str = "normal",
        expect: int = 201,
        **options: Any,
    ) -> dict[str, Any]:
        """POST a task; assert the status code; return the task JSON."""
        body: dict[str, Any] = {"type": type_, "priority": priority, **options}
        if payload is not None:
            body["payload"] = payload
        resp = await self.http.post(f"{self.api_url}/tasks", json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()["task"]  # type: ignore[no-any-return]

    async def get(self, task_id: str) -> dict[str, Any]:
        """GET a task's JSON."""
        resp = await self.http.get(f"{self.api_url}/tasks/{task_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()["task"]  # type: ignore[no-any-return]

    async def executions(self, task_id: str) -> list[dict[str, Any]]:
        """GET a task's executions, ordered by attempt."""
        resp = await self.http.get(f"{self.api_url}/tasks/{task_id}/executions")
        assert resp.status_code == 200, resp.text
        return resp.json()["items"]  # type: ignore[no-any-return]

    async def wait_status(
        self, task_id: str, statuses: set[str] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll until the task's status is in ``statuses`` (default: terminal); return it."""
        wanted = statuses or TERMINAL

        async def reached() -> dict[str, Any] | None:
            task = await self.get(task_id)
            return task if task["status"] in wanted else None

        return await wait_for(
            reached, timeout, interval=0.1, what=f"task {task_id} to reach {sorted(wanted)}"
        )

    async def wait_all(
        self, task_ids: list[str], timeout: float = 60.0, statuses: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Wait until every task is in ``statuses`` (default terminal), via the database."""
        wanted = sorted(statuses or TERMINAL)

        async def done() -> bool:
            count = await self.db_value(
                "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
                task_ids,
                wanted,
            )
            return count == len(task_ids)

        await wait_for(done, timeout, interval=0.2, what=f"{len(task_ids)} tasks to finish")
        return [await self.get(t) for t in task_ids]

    async def dead_letters(self, **params: str) -> list[dict[str, Any]]:
        """GET the dlq-monitor's dead-letter list (first page, up to 200)."""
        resp = await self.http.get(f"{self.dlq_url}/dlq", params={"limit": "200", **params})
        assert resp.status_code == 200, resp.text
        return resp.json()["items"]  # type: ignore[no-any-return]

    # -- direct reads -------------------------------------------------------------------------

    async def db_value(self, sql: str, *args: Any) -> Any:
        """Run one query on this test's database and return the first value."""
        conn = await asyncpg.connect(self.env["DATABASE_URL"])
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def db_rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one query on this test's database and return the rows."""
        conn = await asyncpg.connect(self.env["DATABASE_URL"])
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    def js_info(self) -> dict[str, Any]:
        """Run ``js-info --json`` with this stack's env; return the parsed output."""
        out = subprocess.run(
            [sys.executable, "-m", "taskflow_js_info", "--json"],
            env={**_base_env(), **self.env},
            capture_output=True,
            check=True,
            timeout=30,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]


async def post(stack: Stack, path: str, **kwargs: Any) -> httpx.Response:
    """POST to the ingest API at ``path`` (under ``/api/v1``); return the response."""
    return await stack.http.post(f"{stack.api_url}{path}", **kwargs)


async def execution_started(stack: Stack, task_id: str) -> dict[str, Any]:
    """Wait up to 30 s for the task's latest execution to be ``started``; return it."""

    async def started() -> dict[str, Any] | None:
        execs = await stack.executions(task_id)
        return execs[-1] if execs and execs[-1]["status"] == "started" else None

    found = await wait_for(started, 30, interval=0.02, what=f"task {task_id} to start")
    assert found is not None
    return dict(found)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
