"""Both taskflow_client clients behind one awaitable interface, so a test runs with each.

``Api(aio=AsyncClient(...))`` awaits the async client; ``Api(sync=Client(...))`` calls
the blocking one directly on the test's thread (it needs no event loop; the services
are separate processes). Each method returns what the client returns.
"""

from __future__ import annotations

import builtins
import uuid
from typing import Any

from taskflow_client import AsyncClient, Client, DeadLetter, Execution, NewTask, Task


class Api:
    """The calls the tests make, through either client (one of ``aio``/``sync`` is set)."""

    def __init__(self, aio: AsyncClient | None = None, sync: Client | None = None) -> None:
        assert (aio is None) != (sync is None)
        self.aio = aio
        self.sync = sync
        self.kind = "async" if aio else "sync"

    async def submit(self, type_: str, payload: Any = None, **options: Any) -> Task:
        if self.aio:
            return await self.aio.submit(type_, payload, **options)
        assert self.sync
        return self.sync.submit(type_, payload, **options)

    async def submit_batch(self, tasks: builtins.list[NewTask]) -> builtins.list[Task]:
        if self.aio:
            return await self.aio.submit_batch(tasks)
        assert self.sync
        return self.sync.submit_batch(tasks)

    async def get(self, task_id: uuid.UUID | str) -> Task:
        if self.aio:
            return await self.aio.get(task_id)
        assert self.sync
        return self.sync.get(task_id)

    async def wait(self, task_id: uuid.UUID | str, timeout_s: float = 30.0) -> Task:
        if self.aio:
            return await self.aio.wait(task_id, timeout_s)
        assert self.sync
        return self.sync.wait(task_id, timeout_s)

    async def list(self, **filters: Any) -> builtins.list[Task]:
        if self.aio:
            return [t async for t in self.aio.list(**filters)]
        assert self.sync
        return builtins.list(self.sync.list(**filters))

    async def executions(self, task_id: uuid.UUID | str) -> builtins.list[Execution]:
        if self.aio:
            return await self.aio.executions(task_id)
        assert self.sync
        return self.sync.executions(task_id)

    async def cancel(self, task_id: uuid.UUID | str) -> Task:
        if self.aio:
            return await self.aio.cancel(task_id)
        assert self.sync
        return self.sync.cancel(task_id)

    async def retry(self, task_id: uuid.UUID | str) -> Task:
        if self.aio:
            return await self.aio.retry(task_id)
        assert self.sync
        return self.sync.retry(task_id)

    async def dead_letters(self, **filters: Any) -> builtins.list[DeadLetter]:
        if self.aio:
            return [d async for d in self.aio.dead_letters(**filters)]
        assert self.sync
        return builtins.list(self.sync.dead_letters(**filters))

    async def replay(self, task_id: uuid.UUID | str) -> Task:
        if self.aio:
            return await self.aio.replay(task_id)
        assert self.sync
        return self.sync.replay(task_id)
