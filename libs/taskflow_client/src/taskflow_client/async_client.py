"""The asynchronous TaskFlow client, :class:`AsyncClient` (on ``httpx.AsyncClient``).

It talks to the ingest API (tasks) and the dlq-monitor (dead letters); the blocking twin
with the same methods is :class:`taskflow_client.sync_client.Client`. Use it as an async
context manager so the connection pool is closed::

    async with AsyncClient("http://127.0.0.1:8080") as tf:
        task = await tf.submit("demo", {"x": 1})
        done = await tf.wait(task.id, timeout_s=30)

Errors are :class:`~taskflow_client.errors.TaskFlowAPIError` subclasses carrying the
problem ``code`` (see :mod:`taskflow_client.errors`); a refused connection or timeout is
:class:`~taskflow_client.errors.Unavailable`. No call is retried by the client.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from taskflow_client import calls, errors, schedule_calls
from taskflow_client.calls import Call, Page, TaskId
from taskflow_client.endpoints import (
    DEFAULT_API_URL,
    DEFAULT_DLQ_URL,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WAIT_S,
    Endpoints,
)
from taskflow_client.models import DeadLetter, Execution, NewTask, Priority, Schedule, Task
from taskflow_client.schedule_calls import Every, NewSchedule

T = TypeVar("T")


class AsyncClient(Endpoints):
    """Asynchronous client (``httpx.AsyncClient``) for the ingest API and dlq-monitor.

    ``api_url``/``dlq_url``: base URLs, with or without the ``/api/v1`` suffix.
    ``timeout``: seconds allowed to connect and for each answer (long polls get their
    wait on top). Not safe to share across event loops.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        dlq_url: str = DEFAULT_DLQ_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(api_url, dlq_url, timeout)
        self._http = httpx.AsyncClient(timeout=timeout, headers={"Accept": "application/json"})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        url = self._url(call)
        try:
            resp = await self._http.request(
                call.method,
                url,
                params=list(call.params),
                json=call.json,
                headers=call.headers,
                timeout=self._timeout(call),
            )
        except httpx.TransportError as exc:
            raise errors.from_transport(exc, url) from exc
        return calls.finish(call, resp)

    async def _pages(
        self, make: Callable[[int, str | None], Call[Page[T]]], page_size: int, limit: int | None
    ) -> AsyncIterator[T]:
        page_size, left = calls.page_sizes(limit, page_size)
        cursor: str | None = None
        while left is None or left > 0:
            page = await self._send(
                make(page_size if left is None else min(page_size, left), cursor)
            )
            for item in page.items:
                yield item
            if left is not None:
                left -= len(page.items)
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor

    async def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        priority: Priority = "normal",
        max_attempts: int | None = None,
        run_at: dt.datetime | None = None,
        delay_ms: int | None = None,
        timeout_s: float | None = None,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create a task and return it (``queued``).

        ``payload``: any JSON value (None: the server's default ``{}``). ``max_attempts``
        None: the server's default. ``run_at`` (aware) or ``delay_ms`` delays the first
        run; ``timeout_s`` bounds each attempt (seconds); ``tags``: string map. With
        ``idempotency_key``, resubmitting the same request returns the task created
        the first time; the same key with a different request is 409
        ``idempotency_key_reused``. Raises ValidationFailed (422 naming the field),
        Conflict, Unavailable.
        """
        new = NewTask(
            type,
            payload,
            priority,
            max_attempts,
            run_at,
            delay_ms,
            timeout_s,
            tags,
            idempotency_key,
        )
        return await self._send(calls.submit(new))

    async def submit_batch(self, tasks: Iterable[NewTask]) -> builtins.list[Task]:
        """Create up to 1,000 tasks in one request and one transaction; return them in order.

        Each item may carry its own ``idempotency_key`` (a replayed item returns the
        existing task). One invalid item rejects the whole batch: ValidationFailed whose
        ``errors`` name ``tasks[i].field``; nothing is created.
        """
        return await self._send(calls.submit_batch(tasks))

    async def get(self, task_id: TaskId) -> Task:
        """Return the task now. Raises NotFound (404), ValidationFailed for a non-UUID id."""
        return await self._send(calls.get(task_id))

    async def wait(self, task_id: TaskId, timeout_s: float = DEFAULT_WAIT_S) -> Task:
        """Return the task once it is terminal, or its current state after ``timeout_s``.

        Long-polls ``GET /tasks/{id}?wait=<ms>ms`` (at most 60 s per request) until the
        task is ``completed``/``failed``/``cancelled`` or ``timeout_s`` seconds have
        passed; check :attr:`Task.terminal` on the result. Against an API that answers
        at once (no long polling) it polls twice a second instead. Raises NotFound,
        Unavailable.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            step = calls.wait_step(deadline - time.monotonic())
            asked = time.monotonic()
            task = await self._send(calls.get(task_id, wait_s=step))
            if task.terminal or step is None:
                return task
            if time.monotonic() - asked < step - calls.EARLY_S:
                # Answered well before its wait ended, and not terminal: an API without
                # long polling. Poll at a bounded rate rather than spin.
                await asyncio.sleep(calls.poll_pause(deadline - time.monotonic()))

    async def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        priority: str | None = None,
        tags: Mapping[str, str] | None = None,
        schedule: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> AsyncIterator[Task]:
        """Iterate over tasks newest first, fetching pages of ``page_size`` (1..200).

        Filters are equalities (``schedule``: the tasks that schedule made); each tag
        is sent as ``tag=k:v``. Stops after ``limit``
        tasks (None: all). Pages are keyset-based, so tasks created while iterating do
        not shift it. Raises ValidationFailed for a bad filter, Unavailable.
        """

        def make(size: int, cursor: str | None) -> Call[Page[Task]]:
            return calls.list_tasks(
                status=status,
                type=type,
                priority=priority,
                tags=tags,
                limit=size,
                cursor=cursor,
                schedule=schedule,
            )

        async for task in self._pages(make, page_size, limit):
            yield task

    async def executions(self, task_id: TaskId) -> builtins.list[Execution]:
        """Return the task's attempts ordered by attempt number (``[]`` before the first)."""
        return await self._send(calls.executions(task_id))

    async def cancel(self, task_id: TaskId) -> Task:
        """Cancel a task; return it. Raises Conflict ``invalid_state`` once terminal."""
        return await self._send(calls.cancel(task_id))

    async def retry(self, task_id: TaskId) -> Task:
        """Queue a failed or cancelled task again with a fresh attempt budget; return it.

        Raises Conflict ``invalid_state`` for a task in any other state.
        """
        return await self._send(calls.retry(task_id))

    async def dead_letters(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        q: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> AsyncIterator[DeadLetter]:
        """Iterate over dead letters newest first (dlq-monitor), page by page.

        ``status``: ``open``/``replayed``/``discarded``; ``q``: substring of the error
        or reason; ``limit``: stop after that many (None: all).
        """

        def make(size: int, cursor: str | None) -> Call[Page[DeadLetter]]:
            return calls.dead_letters(status=status, type=type, q=q, limit=size, cursor=cursor)

        async for letter in self._pages(make, page_size, limit):
            yield letter

    async def replay(self, task_id: TaskId) -> Task:
        """Replay a dead-lettered task (dlq-monitor): ``queued`` again; return it.

        Raises NotFound, Conflict ``invalid_state`` unless the task is failed/cancelled.
        """
        return await self._send(calls.replay(task_id))

    # -- schedules ------------------------------------------------------------------------

    async def create_schedule(
        self,
        name: str,
        type: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        every: Every | None = None,
        priority: Priority = "normal",
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        tags: Mapping[str, str] | None = None,
        missed: str | None = None,
        catch_up_max: int | None = None,
        overlap: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Create a schedule and return it (the arguments of :class:`NewSchedule`).

        Give ``cron`` (with an optional IANA ``timezone``) or ``every`` (``"30s"``,
        seconds, or a timedelta; at least 1 s). Raises ValidationFailed (422 naming the
        field: an invalid cron, an unknown zone, an interval under 1 s, a bad policy),
        Conflict ``schedule_exists`` for a name in use; nothing is stored then.
        """
        new = NewSchedule(
            name,
            type,
            payload,
            cron,
            timezone,
            every,
            priority,
            max_attempts,
            timeout_s,
            tags,
            missed,
            catch_up_max,
            overlap,
            paused,
        )
        return await self._send(schedule_calls.create(new))

    async def get_schedule(self, name: str) -> Schedule:
        """Return the schedule ``name`` (with its next and last fire times). Raises NotFound."""
        return await self._send(schedule_calls.get(name))

    async def schedules(
        self, *, paused: bool | None = None, page_size: int = 50, limit: int | None = None
    ) -> AsyncIterator[Schedule]:
        """Iterate over schedules by name (``paused``: only paused or only active ones)."""

        def make(size: int, cursor: str | None) -> Call[Page[Schedule]]:
            return schedule_calls.list_schedules(paused=paused, limit=size, cursor=cursor)

        async for schedule in self._pages(make, page_size, limit):
            yield schedule

    async def update_schedule(
        self,
        name: str,
        *,
        task: Mapping[str, Any] | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        every: Every | None = None,
        missed: str | None = None,
        catch_up_max: int | None = None,
        overlap: str | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """Change a schedule; None leaves a member as it is; return the new schedule.

        ``task`` holds the template members to replace (``{"payload": {...}}``). A new
        ``cron``/``timezone``/``every`` re-times the schedule from now. Raises NotFound,
        ValidationFailed (nothing changed).
        """
        body = schedule_calls.change_body(
            task=task,
            cron=cron,
            timezone=timezone,
            every=every,
            missed=missed,
            catch_up_max=catch_up_max,
            overlap=overlap,
            paused=paused,
        )
        return await self._send(schedule_calls.update(name, body))

    async def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule (no tick fires until it is resumed); return it."""
        return await self._send(schedule_calls.action(name, "pause"))

    async def resume_schedule(self, name: str) -> Schedule:
        """Resume a schedule (missed ticks follow its missed-tick policy); return it."""
        return await self._send(schedule_calls.action(name, "resume"))

    async def run_schedule(self, name: str) -> Task:
        """Create one task from the schedule's template now (paused or not); return it."""
        return await self._send(schedule_calls.run(name))

    async def delete_schedule(self, name: str) -> None:
        """Delete a schedule (the tasks it made stay). Raises NotFound."""
        await self._send(schedule_calls.delete(name))
