"""Small helpers the fault scenarios share: JetStream state, DB clock, a supervisor.

Everything here observes real servers (a fresh NATS connection per call, the test's
database); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import statistics
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.js import api
from nats.js.client import JetStreamContext

from tests.support.procs import ServiceProcess
from tests.support.stack import Stack, parse_ts


@asynccontextmanager
async def jetstream(env: Mapping[str, str]) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a fresh connection to the stack's NATS (closed after)."""
    nc = await nats.connect(env["NATS_URL"], connect_timeout=2, max_reconnect_attempts=2)
    try:
        yield nc.jetstream(timeout=5)
    finally:
        await nc.close()


async def consumer_info(env: Mapping[str, str], priority: str) -> api.ConsumerInfo:
    """The server's view of the task consumer of ``priority``."""
    async with jetstream(env) as js:
        return await js.consumer_info(
            env["NATS_STREAM_NAME"], f"{env['NATS_CONSUMER_NAME']}-{priority}"
        )


async def stream_info(env: Mapping[str, str]) -> api.StreamInfo | None:
    """The task stream's info, or None when the stream does not exist."""
    async with jetstream(env) as js:
        try:
            return await js.stream_info(env["NATS_STREAM_NAME"])
        except nats.js.errors.NotFoundError:
            return None


async def db_now(stack: Stack) -> dt.datetime:
    """The database clock (every timestamp the services write comes from it)."""
    value = await stack.db_value("SELECT now()")
    assert isinstance(value, dt.datetime)
    return value


async def executions(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    """A task's executions from the API, with ``started_at``/``finished_at`` parsed."""
    out = []
    for e in await stack.executions(task_id):
        out.append(
            e | {"started": parse_ts(e["started_at"]), "finished": parse_ts(e["finished_at"])}
        )
    return out


def statuses(execs: list[dict[str, Any]]) -> list[str]:
    """The executions' statuses in attempt order."""
    return [e["status"] for e in sorted(execs, key=lambda e: e["attempt"])]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


class Supervisor:
    """Restart a worker whenever it exits, like systemd's ``Restart=always`` (bounded).

    ``start()`` launches the first process; each exit starts a replacement with a new
    ``WORKER_ID`` until ``max_restarts`` is reached or :meth:`stop` is called.
    """

    def __init__(self, stack: Stack, extra: Mapping[str, str], *, max_restarts: int) -> None:
        self.stack = stack
        self.extra = dict(extra)
        self.max_restarts = max_restarts
        self.restarts = 0
        self.exits: list[int | None] = []
        self.current: ServiceProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the first worker (ready) and the restart loop."""
        self.current = await self.stack.start_worker(self.extra)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopping:
            proc = self.current
            assert proc is not None
            while proc.running and not self._stopping:
                await asyncio.sleep(0.05)  # poll the child like a supervisor's waitpid loop
            if self._stopping:
                return
            self.exits.append(proc.returncode)
            if self.restarts >= self.max_restarts:
                return
            self.restarts += 1
            self.current = await self.stack.start_worker(self.extra)

    async def stop(self) -> None:
        """Stop restarting (the processes are stopped by the ``services`` fixture)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
