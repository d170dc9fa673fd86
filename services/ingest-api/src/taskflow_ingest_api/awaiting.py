"""Awaitable results: ``GET /api/v1/tasks/{id}?wait=...`` and ``GET .../events`` (SSE).

Neither polls Postgres. A request registers a :class:`~taskflow_ingest_api.waiters.Waiter`
on its task *before* reading it, then parks until the API's LISTEN connection hears of a
change to that task (migration 0002's trigger) or its own deadline passes, and only then
reads the rows again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson

from taskflow_common.errors import NotFoundError, UnavailableError
from taskflow_common.http import parse_uuid
from taskflow_common.logs import get_logger
from taskflow_common.store import tasks as store
from taskflow_common.store.rows import TERMINAL_STATUSES, execution_json, task_json
from taskflow_ingest_api.deps import Deps
from taskflow_ingest_api.settings import ApiSettings
from taskflow_ingest_api.wait_param import parse_wait
from taskflow_ingest_api.waiters import Waiter

log = get_logger(__name__)

CLOSE_GRACE_S = 2.0
"""After a terminal state, how long a stream waits for a still-open attempt to close
(a cancel closes the task first and the running attempt a moment later)."""


class TaskResource:
    """``/api/v1/tasks/{task_id}``: one task, optionally once it is finished."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._max_wait_s = settings.long_poll_max_s
        self._deps = deps

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Return ``{"task": Task}``; with ``?wait=<n>ms|<n>s`` (<= 60 s) a long poll.

        The long poll answers as soon as the task is completed, failed or cancelled,
        or when the wait ends, with the state at that moment (200 either way; the
        status tells which). The wait is cut to ``LONG_POLL_MAX_S`` when that is lower.
        400 ``invalid_id``, 404 ``not_found``, 422 for a bad or unknown parameter.
        """
        tid = parse_uuid(task_id)
        wait_s = parse_wait(req.params)
        if wait_s:
            wait_s = min(wait_s, self._max_wait_s)
        if not wait_s:
            row = await self._read(tid)
        else:
            row = await self._until_terminal(tid, wait_s)
        resp.media = {"task": task_json(row)}

    async def _read(self, task_id: uuid.UUID) -> asyncpg.Record:
        async with self._deps.database().acquire() as conn:
            return await store.get(conn, task_id)

    async def _until_terminal(self, task_id: uuid.UUID, wait_s: float) -> asyncpg.Record:
        events = self._deps.task_events()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        with events.watch(task_id) as waiter:
            row = await self._read(task_id)
            while row["status"] not in TERMINAL_STATUSES:
                remaining = deadline - loop.time()
                if remaining <= 0 or events.closing:
                    return await self._read(task_id)
                if not await waiter.changed(remaining):
                    # The wait is over: answer with the state as it is now.
                    return await self._read(task_id)
                # Non-terminal changes (claimed, retrying) need no read.
                if waiter.take_terminal_hint():
                    row = await self._read(task_id)
        return row


class EventsResource:
    """``/api/v1/tasks/{task_id}/events``: the task's changes as Server-Sent Events."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._heartbeat_s = settings.sse_heartbeat_s
        self._max_s = settings.sse_max_s or None
        self._deps = deps

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Stream ``text/event-stream``: ``event: state`` / ``event: attempt`` messages.

        Starts with the current state (``state``, data = Task JSON) and one ``attempt``
        (data = Execution JSON) per attempt so far. Then, on each change: an
        ``attempt`` event per new or changed attempt, then a ``state`` event if the task
        changed. Changes closer together than one read may arrive as their latest
        state only. Ends after a terminal state (once its last attempt is closed, or
        after :data:`CLOSE_GRACE_S`), after ``SSE_MAX_S`` if set, when the API shuts
        down, or when Postgres is unreachable (the client reconnects and starts over
        from the current state). A ``: keep-alive`` comment is sent after
        ``SSE_HEARTBEAT_S`` (default 15) seconds without an event. 400/404 as problems
        before the stream starts.
        """
        tid = parse_uuid(task_id)
        waiter = self._deps.task_events().watch(tid)
        try:
            task, attempts = await self._read(tid)
        except BaseException:
            waiter.close()
            raise
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # proxies: do not buffer the stream
        resp.sse = self._stream(waiter, task, attempts)

    async def _read(self, task_id: uuid.UUID) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
        async with self._deps.database().acquire() as conn:
            task = await store.get(conn, task_id)
            attempts = await store.executions(conn, task_id)
        return task, attempts

    async def _stream(
        self, waiter: Waiter, task: asyncpg.Record, attempts: Sequence[asyncpg.Record]
    ) -> AsyncIterator[falcon.asgi.SSEvent]:
        events = self._deps.task_events()
        loop = asyncio.get_running_loop()
        with waiter:
            yield _event("state", task_json(task))
            seen: dict[int, str] = {}
            for attempt in attempts:
                seen[attempt["attempt"]] = attempt["status"]
                yield _event("attempt", execution_json(attempt))
            version = task["version"], task["status"]
            close_by = None if self._max_s is None else loop.time() + self._max_s
            next_beat = loop.time() + self._heartbeat_s
            while not events.closing:
                if task["status"] in TERMINAL_STATUSES:
                    if all(a["status"] != "started" for a in attempts):
                        return
                    grace_end = loop.time() + CLOSE_GRACE_S
                    close_by = grace_end if close_by is None else min(close_by, grace_end)
                if close_by is not None and loop.time() >= close_by:
                    return
                wake_at = next_beat if close_by is None else min(next_beat, close_by)
                if not await waiter.changed(wake_at - loop.time()):
                    if loop.time() < next_beat:
                        continue  # close_by came first
                    yield falcon.asgi.SSEvent(comment="keep-alive")
                    next_beat = loop.time() + self._heartbeat_s
                    continue
                try:
                    task, attempts = await self._read(task["id"])
                except (UnavailableError, NotFoundError) as exc:
                    log.warning("task_events_stream_ended", task_id=str(task["id"]), error=str(exc))
                    return
                for attempt in attempts:
                    if seen.get(attempt["attempt"]) != attempt["status"]:
                        seen[attempt["attempt"]] = attempt["status"]
                        yield _event("attempt", execution_json(attempt))
                        next_beat = loop.time() + self._heartbeat_s
                if (task["version"], task["status"]) != version:
                    version = task["version"], task["status"]
                    yield _event("state", task_json(task))
                    next_beat = loop.time() + self._heartbeat_s


def _event(name: str, doc: dict[str, Any]) -> falcon.asgi.SSEvent:
    return falcon.asgi.SSEvent(event=name, data=orjson.dumps(doc))
