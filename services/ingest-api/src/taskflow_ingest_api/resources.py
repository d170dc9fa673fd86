"""HTTP resources of the ingest API (Falcon ASGI responders).

Routes (the OpenAPI document, :mod:`taskflow_ingest_api.openapi`, is the reference)::

    POST /api/v1/tasks                    201 {"task": Task} + Location
                                          200 + Idempotent-Replayed: true (same key, same body)
    POST /api/v1/tasks/batch              201 {"items": [{"task": Task, "created": bool}]}
    GET  /api/v1/tasks                    200 {"items": [Task], "next_cursor": str | null}
                                          (?status ?type ?priority ?schedule ?tag=k:v...
                                          ?limit ?cursor)
    GET  /api/v1/tasks/{task_id}          200 {"task": Task} (?wait=30s: long poll)
    GET  /api/v1/tasks/{task_id}/events   200 text/event-stream
    GET  /api/v1/tasks/{task_id}/executions  200 {"items": [Execution]}
    POST /api/v1/tasks/{task_id}/cancel   200 {"task": Task} | 409 invalid_state
    POST /api/v1/tasks/{task_id}/retry    200 {"task": Task} | 409 invalid_state
    GET  /api/v1/health                   200 {"status": "ok"|"degraded", "checks": {...}}
    GET  /api/v1/ready                    200 {"status": "ready"} | 503 unavailable
    GET  /api/v1/openapi.json             200 the OpenAPI 3.1 document

The long poll and the event stream live in :mod:`taskflow_ingest_api.awaiting`, the
schedules' routes in :mod:`taskflow_ingest_api.schedules`. Errors
are problem+json (:mod:`taskflow_common.http`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import falcon
import falcon.asgi
import orjson
from opentelemetry.trace import SpanKind

from taskflow_common import tracing
from taskflow_common.bus import TRANSIENT_ERRORS as NATS_ERRORS
from taskflow_common.errors import BatchKeyReused
from taskflow_common.http import Problem, parse_uuid, read_body
from taskflow_common.logs import get_logger
from taskflow_common.messages import CancelRequest
from taskflow_common.store import deadletters, submissions
from taskflow_common.store import tasks as store
from taskflow_common.store.rows import execution_json, task_json
from taskflow_ingest_api.awaiting import EventsResource, TaskResource
from taskflow_ingest_api.deps import Deps
from taskflow_ingest_api.openapi import document
from taskflow_ingest_api.settings import ApiSettings
from taskflow_ingest_api.submitter import GroupSubmitter
from taskflow_ingest_api.validation import (
    check_content_type,
    parse_batch,
    parse_idempotency_key,
    parse_list_query,
    parse_submit,
)

__all__ = ["API", "Deps", "add_routes"]

log = get_logger(__name__)

API = "/api/v1"


class TasksResource:
    """``/api/v1/tasks``: submit and list."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps
        self._group = GroupSubmitter(
            deps.database,
            max_bytes=settings.max_batch_body_bytes,
            errors=deps.metrics.loop_errors,
        )
        self._span_attributes = {"db.system.name": "postgresql", "db.operation.name": "INSERT"}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Create a task (201) or replay the one created under this Idempotency-Key (200).

        Without a key the insert is group-committed with concurrent submits
        (:class:`~taskflow_ingest_api.submitter.GroupSubmitter`): still 201 only after
        this task's row committed. With a key it is a statement of its own
        (:func:`~taskflow_common.store.submissions.submit`).
        """
        check_content_type(req.content_type)
        key = parse_idempotency_key(req.get_header("Idempotency-Key"))
        raw = await read_body(req, self._settings.max_body_bytes)
        spec = parse_submit(
            raw,
            idempotency_key=key,
            default_max_attempts=self._settings.worker_max_attempts,
            max_depth=self._settings.max_json_depth,
        )
        # The task carries the request span's context, not the insert span's: the
        # dispatcher's publish span is a child of the request.
        parent = tracing.current_traceparent()
        with self._deps.tracer.start_as_current_span(
            "INSERT tasks", kind=SpanKind.CLIENT, attributes=self._span_attributes
        ) as span:
            if key is None:
                row, group_size = await self._group.submit(spec, parent, len(raw))
                created = True
                span.set_attribute("db.operation.batch.size", group_size)
            else:
                async with self._deps.database().acquire() as conn:
                    row, created = await submissions.submit(conn, spec, trace_parent=parent)
            task_id = str(row["id"])
            span.set_attribute("taskflow.task_id", task_id)
        resp.location = f"{API}/tasks/{task_id}"
        resp.media = {"task": task_json(row)}
        if created:
            resp.status = falcon.HTTP_201
            self._deps.metrics.task_submitted(spec.type, spec.priority)
            log.info("task_submitted", task_id=task_id, type=spec.type, priority=spec.priority)
        else:
            resp.set_header("Idempotent-Replayed", "true")
            log.info("task_submit_replayed", task_id=task_id, idempotency_key=key)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List tasks newest first, filtered, one keyset page at a time."""
        query = parse_list_query(req.params)
        async with self._deps.database().acquire() as conn:
            page = (
                store.Page([], None)
                if query.matches_nothing
                else await store.list_tasks(
                    conn,
                    status=query.status,
                    type=query.type,
                    priority=query.priority,
                    schedule=query.schedule,
                    tags=query.tags,
                    limit=query.limit,
                    cursor=query.cursor,
                )
            )
        resp.media = {"items": [task_json(r) for r in page.rows], "next_cursor": page.next_cursor}


class BatchResource:
    """``/api/v1/tasks/batch``: submit up to 1,000 tasks in one transaction."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Create every task of ``{"tasks": [spec, ...]}`` or none; 201 with the items.

        Response ``{"items": [{"task": Task, "created": bool}, ...]}`` in request order
        (``created`` false: an ``idempotency_key`` replayed an existing task). A bad
        item: 422 ``validation_error`` with ``errors`` naming ``tasks[i].field`` and
        ``index``. A key reused with another spec: 409 ``idempotency_key_reused`` with
        ``index``. Body limit ``MAX_BATCH_BODY_BYTES`` (413).
        """
        check_content_type(req.content_type)
        raw = await read_body(req, self._settings.max_batch_body_bytes)
        specs = parse_batch(
            raw,
            default_max_attempts=self._settings.worker_max_attempts,
            max_depth=self._settings.max_json_depth,
        )
        parent = tracing.current_traceparent()
        with self._deps.tracer.start_as_current_span(
            "INSERT tasks",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "INSERT",
                "db.operation.batch.size": len(specs),
            },
        ):
            async with self._deps.database().acquire() as conn:
                try:
                    results = await submissions.submit_batch(conn, specs, trace_parent=parent)
                except BatchKeyReused as exc:
                    raise Problem(
                        409, exc.code, str(exc), extensions={"index": exc.index}
                    ) from None
        created = 0
        for spec, (_, was_created) in zip(specs, results, strict=True):
            if was_created:
                created += 1
                self._deps.metrics.task_submitted(spec.type, spec.priority)
        resp.status = falcon.HTTP_201
        resp.data = orjson.dumps(
            {"items": [{"task": task_json(row), "created": made} for row, made in results]}
        )
        resp.content_type = falcon.MEDIA_JSON
        log.info("tasks_submitted", count=len(specs), created=created)


class CancelResource:
    """``/api/v1/tasks/{task_id}/cancel``."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Cancel the task: 200 ``{"task"}``; 404; 409 ``invalid_state`` once terminal.

        Queued or retrying: ``cancelled`` at once, never runs. Processing: the task is
        ``cancelled`` and its attempt closed ``cancelled`` in Postgres (see
        :func:`~taskflow_common.store.tasks.cancel`), then a ``CancelRequest`` on the
        cancel subject tells the owning worker to stop the handler (it does within a
        second). If NATS is down the worker still stops it at its next lease renewal,
        which finds the attempt closed.
        """
        tid = parse_uuid(task_id)
        async with self._deps.database().acquire() as conn:
            result = await store.cancel(conn, tid)
        if result.stopped_attempt is not None:
            await self._tell_worker(tid, result.stopped_attempt)
        resp.media = {"task": task_json(result.task)}
        log.info("task_cancelled", task_id=task_id, running_attempt=result.stopped_attempt)

    async def _tell_worker(self, task_id: uuid.UUID, attempt: int) -> None:
        bus = self._deps.bus
        if bus is None or not bus.connected:
            log.warning("cancel_not_published", task_id=str(task_id), reason="nats not connected")
            return
        try:
            # Core NATS, fire and forget: every worker hears it; the owner acts.
            request = CancelRequest(task_id, attempt)
            await bus.nc.publish(bus.names.cancel_subject, request.encode())
        except NATS_ERRORS as exc:
            log.warning("cancel_not_published", task_id=str(task_id), error=repr(exc))


class RetryResource:
    """``/api/v1/tasks/{task_id}/retry``."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Send a failed or cancelled task back to ``queued``: 200 ``{"task"}``.

        A fresh attempt budget (``failed_attempts`` reset), history kept and attempts
        numbered on; its open dead letters become ``replayed``
        (:func:`~taskflow_common.store.deadletters.replay`). 404 for an unknown task,
        409 ``invalid_state`` for any other status.
        """
        tid = parse_uuid(task_id)
        async with self._deps.database().acquire() as conn:
            row = await deadletters.replay(conn, tid)
        resp.media = {"task": task_json(row)}
        log.info("task_retried", task_id=task_id, dead_letters=row["dead_letters_replayed"])


class ExecutionsResource:
    """``/api/v1/tasks/{task_id}/executions``: the task's attempts, by attempt number."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Return ``{"items": [Execution]}``; 404 when the task does not exist."""
        tid = parse_uuid(task_id)
        async with self._deps.database().acquire() as conn:
            rows = await store.executions(conn, tid)
        resp.media = {"items": [execution_json(r) for r in rows]}


class HealthResource:
    """``/api/v1/health``: always 200; reports each dependency's state and latency."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._timeout_s = min(settings.db_acquire_timeout, 2.0)
        self._deps = deps

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``{"status": "ok"|"degraded", "checks": {"postgres", "nats", "events"}}``.

        The postgres and nats checks are ``{"ok": true, "latency_ms": float}`` or
        ``{"ok": false, "error": str}``; they run concurrently and each gives up after
        at most 2 s. ``events`` is ``{"ok": bool, "waiters": int}``: whether the LISTEN
        connection that wakes long polls and event streams is up, and how many requests
        are parked on it. Any check not ok makes the status ``degraded``.
        """
        postgres, nats = await asyncio.gather(self._check_postgres(), self._check_nats())
        hub = self._deps.events
        events = {
            "ok": hub is not None and hub.listening,
            "waiters": hub.waiting if hub is not None else 0,
        }
        ok = postgres["ok"] and nats["ok"] and events["ok"]
        resp.media = {
            "status": "ok" if ok else "degraded",
            "checks": {"postgres": postgres, "nats": nats, "events": events},
        }

    async def _check_postgres(self) -> dict[str, Any]:
        db = self._deps.db
        if db is None:
            return {"ok": False, "error": "not started"}
        return await _timed(db.ping(), self._timeout_s)

    async def _check_nats(self) -> dict[str, Any]:
        bus = self._deps.bus
        if bus is None or not bus.connected:
            return {"ok": False, "error": "not connected"}
        # flush() is a PING/PONG round trip: the NATS latency.
        return await _timed(bus.nc.flush(timeout=max(1, int(self._timeout_s))), self._timeout_s)


async def _timed(check: Any, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, timeout_s)
    except Exception as exc:
        # Only the class name: driver messages may carry hosts or credentials.
        return {"ok": False, "error": exc.__class__.__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


class ReadyResource:
    """``/api/v1/ready``: 200 when Postgres answers, else 503 ``unavailable``."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Ping Postgres through the pool (bounded by DB_ACQUIRE_TIMEOUT)."""
        await self._deps.database().ping()
        resp.media = {"status": "ready"}


class OpenApiResource:
    """``/api/v1/openapi.json``: the OpenAPI 3.1 document (built once, served as bytes)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = orjson.dumps(document)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Return the document (``application/json``)."""
        resp.data = self._body
        resp.content_type = falcon.MEDIA_JSON


def add_routes(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    settings: ApiSettings,
    deps: Deps,
) -> None:
    """Mount every resource on ``app`` under ``/api/v1``."""
    app.add_route(f"{API}/tasks", TasksResource(settings, deps))
    app.add_route(f"{API}/tasks/batch", BatchResource(settings, deps))
    app.add_route(f"{API}/tasks/{{task_id}}", TaskResource(settings, deps))
    app.add_route(f"{API}/tasks/{{task_id}}/events", EventsResource(settings, deps))
    app.add_route(f"{API}/tasks/{{task_id}}/executions", ExecutionsResource(deps))
    app.add_route(f"{API}/tasks/{{task_id}}/cancel", CancelResource(deps))
    app.add_route(f"{API}/tasks/{{task_id}}/retry", RetryResource(deps))
    app.add_route(f"{API}/health", HealthResource(settings, deps))
    app.add_route(f"{API}/ready", ReadyResource(deps))
    app.add_route(f"{API}/openapi.json", OpenApiResource(document()))
