"""HTTP resources of the ingest API (Falcon ASGI responders).

Routes::

    POST /api/v1/tasks                    201 {"task": Task} + Location
                                          200 + Idempotent-Replayed: true (same key, same body)
    GET  /api/v1/tasks                    200 {"items": [Task], "next_cursor": str | null}
    GET  /api/v1/tasks/{task_id}          200 {"task": Task}
    GET  /api/v1/tasks/{task_id}/executions  200 {"items": [Execution]}
    GET  /api/v1/health                   200 {"status": "ok"|"degraded", "checks": {...}}
    GET  /api/v1/ready                    200 {"status": "ready"} | 503 unavailable

Errors are problem+json (:mod:`taskflow_common.http`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import falcon
import falcon.asgi
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from taskflow_common import tracing
from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.http import parse_uuid, read_body
from taskflow_common.logs import get_logger
from taskflow_common.metrics import ApiMetrics, new_registry
from taskflow_common.store import tasks as store
from taskflow_common.store.rows import execution_json, task_json
from taskflow_ingest_api.settings import ApiSettings
from taskflow_ingest_api.validation import (
    check_content_type,
    parse_idempotency_key,
    parse_list_query,
    parse_submit,
)

log = get_logger(__name__)

API = "/api/v1"


class Deps:
    """Collaborators of the resources; the lifespan middleware opens and closes them.

    Tests may set ``db``/``bus`` before start-up; the app then uses (and leaves open)
    those instead of opening its own.
    """

    def __init__(
        self,
        tracer: trace.Tracer | None = None,
        db: Database | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.tracer = tracer or trace.get_tracer("taskflow_ingest_api")
        self.db = db
        self.bus = bus
        # One registry per app (tests build several apps in one process).
        self.metrics = ApiMetrics(new_registry())

    def database(self) -> Database:
        """Return the open pool; raise :class:`UnavailableError` before start-up."""
        if self.db is None:
            raise UnavailableError("database pool not open")
        return self.db


class TasksResource:
    """``/api/v1/tasks``: submit and list."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Create a task (201) or replay the one created under this Idempotency-Key (200)."""
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
            "INSERT tasks",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.operation.name": "INSERT"},
        ) as span:
            async with self._deps.database().acquire() as conn:
                row, created = await store.submit(conn, spec, trace_parent=parent)
            span.set_attribute("taskflow.task_id", str(row["id"]))
        task_id = str(row["id"])
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
            page = await store.list_tasks(
                conn,
                status=query.status,
                type=query.type,
                priority=query.priority,
                limit=query.limit,
                cursor=query.cursor,
            )
        resp.media = {"items": [task_json(r) for r in page.rows], "next_cursor": page.next_cursor}


class TaskResource:
    """``/api/v1/tasks/{task_id}``: one task."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Return the task; 400 ``invalid_id`` for a non-UUID, 404 ``not_found``."""
        tid = parse_uuid(task_id)
        async with self._deps.database().acquire() as conn:
            row = await store.get(conn, tid)
        resp.media = {"task": task_json(row)}


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
        """``{"status": "ok"|"degraded", "checks": {"postgres": {...}, "nats": {...}}}``.

        Each check is ``{"ok": true, "latency_ms": float}`` or ``{"ok": false, "error":
        str}``; both run concurrently and each gives up after at most 2 s.
        """
        postgres, nats = await asyncio.gather(self._check_postgres(), self._check_nats())
        ok = postgres["ok"] and nats["ok"]
        resp.media = {
            "status": "ok" if ok else "degraded",
            "checks": {"postgres": postgres, "nats": nats},
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


def add_routes(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    settings: ApiSettings,
    deps: Deps,
) -> None:
    """Mount every resource on ``app`` under ``/api/v1``."""
    app.add_route(f"{API}/tasks", TasksResource(settings, deps))
    app.add_route(f"{API}/tasks/{{task_id}}", TaskResource(deps))
    app.add_route(f"{API}/tasks/{{task_id}}/executions", ExecutionsResource(deps))
    app.add_route(f"{API}/health", HealthResource(settings, deps))
    app.add_route(f"{API}/ready", ReadyResource(deps))
