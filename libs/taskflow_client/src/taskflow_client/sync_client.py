"""The blocking TaskFlow client, :class:`Client` (on ``httpx.Client``: no threads, no loop).

The same methods as :class:`taskflow_client.async_client.AsyncClient`, whose docstrings
give the details; ``list`` and ``dead_letters`` return plain iterators. Use it as a
context manager so the connection pool is closed::

    with Client() as tf:
        for task in tf.list(status="failed", limit=100):
            tf.retry(task.id)

Errors are :class:`~taskflow_client.errors.TaskFlowAPIError` subclasses; a refused
connection or timeout is :class:`~taskflow_client.errors.Unavailable`. No call is retried.
"""

from __future__ import annotations

import builtins
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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


class Client(Endpoints):
    """Blocking client (``httpx.Client``) with the same methods as :class:`AsyncClient`.

    ``list`` and ``dead_letters`` return plain iterators. Safe to use from one thread
    at a time per instance.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        dlq_url: str = DEFAULT_DLQ_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(api_url, dlq_url, timeout)
        self._http = httpx.Client(timeout=timeout, headers={"Accept": "application/json"})

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        url = self._url(call)
        try:
            resp = self._http.request(
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

    def _pages(
        self, make: Callable[[int, str | None], Call[Page[T]]], page_size: int, limit: int | None
    ) -> Iterator[T]:
        page_size, left = calls.page_sizes(limit, page_size)
        cursor: str | None = None
        while left is None or left > 0:
            page = self._send(make(page_size if left is None else min(page_size, left), cursor))
            yield from page.items
            if left is not None:
                left -= len(page.items)
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor

    def submit(
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
        """Create a task and return it; see :meth:`AsyncClient.submit`."""
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
        return self._send(calls.submit(new))

    def submit_batch(self, tasks: Iterable[NewTask]) -> builtins.list[Task]:
        """Create many tasks in one request; see :meth:`AsyncClient.submit_batch`."""
        return self._send(calls.submit_batch(tasks))

    def get(self, task_id: TaskId) -> Task:
        """Return the task now; see :meth:`AsyncClient.get`."""
        return self._send(calls.get(task_id))

    def wait(self, task_id: TaskId, timeout_s: float = DEFAULT_WAIT_S) -> Task:
        """Return the task once terminal or after ``timeout_s``; see :meth:`AsyncClient.wait`."""
        deadline = time.monotonic() + timeout_s
        while True:
            step = calls.wait_step(deadline - time.monotonic())
            asked = time.monotonic()
            task = self._send(calls.get(task_id, wait_s=step))
            if task.terminal or step is None:
                return task
            if time.monotonic() - asked < step - calls.EARLY_S:
                # See AsyncClient.wait: an API without long polling; bound the rate.
                time.sleep(calls.poll_pause(deadline - time.monotonic()))

    def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        priority: str | None = None,
        tags: Mapping[str, str] | None = None,
        schedule: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> Iterator[Task]:
        """Iterate over tasks newest first, page by page; see :meth:`AsyncClient.list`."""

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

        return self._pages(make, page_size, limit)

    def executions(self, task_id: TaskId) -> builtins.list[Execution]:
        """Return the task's attempts by attempt number; see :meth:`AsyncClient.executions`."""
        return self._send(calls.executions(task_id))

    def cancel(self, task_id: TaskId) -> Task:
        """Cancel a task; see :meth:`AsyncClient.cancel`."""
        return self._send(calls.cancel(task_id))

    def retry(self, task_id: TaskId) -> Task:
        """Queue a failed or cancelled task again; see :meth:`AsyncClient.retry`."""
        return self._send(calls.retry(task_id))

    def dead_letters(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        q: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> Iterator[DeadLetter]:
        """Iterate over dead letters newest first; see :meth:`AsyncClient.dead_letters`."""

        def make(size: int, cursor: str | None) -> Call[Page[DeadLetter]]:
            return calls.dead_letters(status=status, type=type, q=q, limit=size, cursor=cursor)

        return self._pages(make, page_size, limit)

    def replay(self, task_id: TaskId) -> Task:
        """Replay a dead-lettered task; see :meth:`AsyncClient.replay`."""
        return self._send(calls.replay(task_id))

    # -- schedules ------------------------------------------------------------------------

    def create_schedule(
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
        """Create a schedule; see :meth:`AsyncClient.create_schedule`."""
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
        return self._send(schedule_calls.create(new))

    def get_schedule(self, name: str) -> Schedule:
        """Return the schedule ``name``; see :meth:`AsyncClient.get_schedule`."""
        return self._send(schedule_calls.get(name))

    def schedules(
        self, *, paused: bool | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[Schedule]:
        """Iterate over schedules by name; see :meth:`AsyncClient.schedules`."""

        def make(size: int, cursor: str | None) -> Call[Page[Schedule]]:
            return schedule_calls.list_schedules(paused=paused, limit=size, cursor=cursor)

        return self._pages(make, page_size, limit)

    def update_schedule(
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
        """Change a schedule; see :meth:`AsyncClient.update_schedule`."""
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
        return self._send(schedule_calls.update(name, body))

    def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule; see :meth:`AsyncClient.pause_schedule`."""
        return self._send(schedule_calls.action(name, "pause"))

    def resume_schedule(self, name: str) -> Schedule:
        """Resume a schedule; see :meth:`AsyncClient.resume_schedule`."""
        return self._send(schedule_calls.action(name, "resume"))

    def run_schedule(self, name: str) -> Task:
        """Create one task from the schedule now; see :meth:`AsyncClient.run_schedule`."""
        return self._send(schedule_calls.run(name))

    def delete_schedule(self, name: str) -> None:
        """Delete a schedule; see :meth:`AsyncClient.delete_schedule`."""
        self._send(schedule_calls.delete(name))
