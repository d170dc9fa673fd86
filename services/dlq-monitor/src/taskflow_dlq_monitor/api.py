"""The dlq-monitor's HTTP API (Falcon ASGI): list, stats, detail, replay, discard, health.

Routes (JSON bodies; errors are problem+json, see :mod:`.problems`):

- ``GET /api/v1/dlq?type=&q=&status=&limit=&cursor=`` -> 200
  ``{"items": [DeadLetter], "next_cursor": str | null}``, newest first. ``type`` exact,
  ``q`` a case-insensitive substring of the error or reason, ``status``
  ``open|replayed|discarded``, ``limit`` 1..200 (default 50), ``cursor`` opaque.
- ``GET /api/v1/dlq/stats`` -> 200 counts by type and error over 1h/24h/7d/all
  (:func:`taskflow_common.store.deadletter_stats.stats`).
- ``GET /api/v1/dlq/{id}`` -> 200 ``{"dead_letters": [DeadLetter + raw], "task": Task |
  null, "executions": [Execution]}``; ``id`` is a task id, or a dead letter's own id for
  one that names no task. Unknown -> 404 ``not_found``; not a UUID -> 400 ``invalid_id``.
- ``POST /api/v1/dlq/{task_id}/replay`` -> 200 ``{"task": Task, "dead_letters_replayed":
  int}``; the task is ``queued`` again and the dispatcher publishes it. Not failed or
  cancelled -> 409 ``invalid_state``.
- ``POST /api/v1/dlq/{id}/discard`` -> 200 ``{"items": [DeadLetter]}`` (now
  ``discarded``); already resolved -> 409 ``invalid_state``.
- ``POST /api/v1/dlq/replay`` with ``{"type": str?, "q": str?, "dry_run": bool}`` ->
  200 ``{"tasks": int, "dead_letters": int, "task_ids": [str], "remaining": int,
  "dry_run": bool}``: replay every failed/cancelled task with an open dead letter
  matching the filter (as the list filters it; at most 1000 per call, ``remaining``
  says how many more match). ``dry_run`` only counts (the console shows the count
  before the operator confirms).
- ``GET /metrics``: Prometheus text format (:mod:`taskflow_common.metrics`).
- ``GET /`` and ``GET /console``: the dead-letter console (:mod:`.console`);
  ``GET /api/v1/console/schedules``, its schedule list (:mod:`.schedules`).
- ``GET /api/v1/health`` -> 200 ``{"status": "ok"|"degraded", "checks": {...}}``;
  ``GET /api/v1/ready`` -> the same body, 503 unless Postgres answers.

DeadLetter JSON is :func:`taskflow_common.store.rows.dead_letter_json`. Bad query
parameters are 422 ``validation_error`` naming the parameter, a foreign cursor is 400
``invalid_cursor`` (the conventions of :mod:`taskflow_common.http`, shared with the
ingest API).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson
from opentelemetry import trace

from taskflow_common import logs
from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.http import (
    ASGIApp,
    FieldError,
    MetricsResource,
    RequestContext,
    RequestMetrics,
    RouteName,
    install,
    parse_uuid,
    validation_error,
)
from taskflow_common.metrics import new_registry
from taskflow_common.store import deadletter_bulk, deadletter_stats, deadletters
from taskflow_common.store.rows import (
    DEAD_LETTER_STATUSES,
    DeadLetterStatus,
    dead_letter_json,
    dead_letters_json,
    execution_json,
    task_json,
)
from taskflow_dlq_monitor import console, schedules
from taskflow_dlq_monitor.consumer import DeadLetterConsumer
from taskflow_dlq_monitor.metrics import DlqMetrics

log = logs.get_logger(__name__)

MAX_FILTER_CHARS = 200
MAX_BODY_BYTES = 64 * 1024
"""Largest request body (bytes; a declared larger one is 413): bodies here are filters."""
"""Longest accepted ``type`` or ``q`` filter (characters)."""
STALE_PULL_S = 10.0
"""The consumer counts as unhealthy when its last successful pull is older (seconds)."""


@dataclass(frozen=True, slots=True)
class Deps:
    """What the resources need: the pool, the NATS connection, the consumer loop, metrics."""

    db: Database
    bus: Bus
    consumer: DeadLetterConsumer
    metrics: DlqMetrics = field(default_factory=lambda: DlqMetrics(new_registry()))


def send_json(resp: falcon.asgi.Response, body: Any, status: int = 200) -> None:
    """Write ``body`` as compact JSON (orjson) with ``status``."""
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Validated ``GET /api/v1/dlq`` parameters."""

    type: str | None
    q: str | None
    status: DeadLetterStatus | None
    limit: int
    cursor: str | None


def list_query(req: falcon.asgi.Request) -> ListQuery:
    """Validate the list parameters; raise 422 ``validation_error`` naming each bad one."""
    errors: list[FieldError] = []
    texts: dict[str, str | None] = {}
    for name in ("type", "q"):
        value = req.get_param(name)
        if value is not None and len(value) > MAX_FILTER_CHARS:
            errors.append(FieldError(name, f"must be at most {MAX_FILTER_CHARS} characters"))
        texts[name] = value
    status = req.get_param("status")
    if status is not None and status not in DEAD_LETTER_STATUSES:
        allowed = ", ".join(DEAD_LETTER_STATUSES)
        errors.append(FieldError("status", f"must be one of: {allowed}"))
    limit = 50
    raw_limit = req.get_param("limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= deadletters.MAX_LIMIT:
            errors.append(
                FieldError("limit", f"must be an integer from 1 to {deadletters.MAX_LIMIT}")
            )
    if errors:
        raise validation_error(errors)
    checked: DeadLetterStatus | None = status  # type: ignore[assignment]
    return ListQuery(texts["type"], texts["q"], checked, limit, req.get_param("cursor"))


class DeadLetterList:
    """``GET /api/v1/dlq``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List dead letters newest first, filtered and keyset-paginated."""
        query = list_query(req)

        async def fetch(conn: asyncpg.Connection) -> deadletters.Page:
            return await deadletters.list_dead_letters(
                conn,
                type=query.type,
                error_contains=query.q,
                status=query.status,
                limit=query.limit,
                cursor=query.cursor,  # a foreign one: InvalidCursor -> 400 invalid_cursor
            )

        page = await self.db.run(fetch)
        send_json(
            resp,
            {"items": dead_letters_json(page.items), "next_cursor": page.next_cursor},
        )


class DeadLetterStats:
    """``GET /api/v1/dlq/stats``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Counts by type, error and status over the stats windows."""
        send_json(resp, await self.db.run(deadletter_stats.stats))


class DeadLetterDetail:
    """``GET /api/v1/dlq/{task_id}``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """A task's dead letters (raw bytes included), the task and its executions."""
        ident = parse_uuid(task_id, "task id")

        async def fetch(conn: asyncpg.Connection) -> deadletters.Detail:
            # One snapshot for the three reads, so the parts agree with each other.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await deadletters.get(conn, ident)

        detail = await self.db.run(fetch)
        send_json(
            resp,
            {
                "dead_letters": [dead_letter_json(r, with_raw=True) for r in detail.dead_letters],
                "task": task_json(detail.task) if detail.task is not None else None,
                "executions": [execution_json(r) for r in detail.executions],
            },
        )


class Replay:
    """``POST /api/v1/dlq/{task_id}/replay``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db
        self.metrics = deps.metrics

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Queue the failed or cancelled task again with a fresh attempt budget."""
        ident = parse_uuid(task_id, "task id")
        row = await self.db.run(lambda conn: deadletters.replay(conn, ident))
        replayed = int(row["dead_letters_replayed"])
        self.metrics.replayed.inc()
        log.info(
            "task_replayed",
            task_id=str(ident),
            attempts=row["attempts"],
            version=row["version"],
            dead_letters_replayed=replayed,
        )
        send_json(resp, {"task": task_json(row), "dead_letters_replayed": replayed})


class Discard:
    """``POST /api/v1/dlq/{id}/discard``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db
        self.metrics = deps.metrics

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Mark the open dead letters of a task (or one dead letter) as discarded."""
        ident = parse_uuid(task_id, "task id")
        rows = await self.db.run(lambda conn: deadletters.discard(conn, ident))
        self.metrics.discarded.inc(len(rows))
        log.info("dead_letters_discarded", id=str(ident), count=len(rows))
        send_json(resp, {"items": dead_letters_json(rows)})


class BulkReplay:
    """``POST /api/v1/dlq/replay``: replay (or, with ``dry_run``, count) by filter."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db
        self.metrics = deps.metrics

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body ``{"type"?, "q"?, "dry_run"?}``; 422 ``validation_error`` for bad fields."""
        body = await req.get_media(default_when_empty={})
        if not isinstance(body, dict):
            raise validation_error([FieldError("body", "must be a JSON object")])
        errors: list[FieldError] = []
        texts: dict[str, str | None] = {}
        for name in ("type", "q"):
            value = body.get(name)
            if value == "":
                value = None
            if value is not None and (not isinstance(value, str) or len(value) > MAX_FILTER_CHARS):
                errors.append(FieldError(name, f"must be a string of at most {MAX_FILTER_CHARS}"))
            texts[name] = value
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            errors.append(FieldError("dry_run", "must be true or false"))
        unknown = sorted(set(body) - {"type", "q", "dry_run"})
        errors += [FieldError(k, "is not a known field") for k in unknown]
        if errors:
            raise validation_error(errors)
        kind, text = texts["type"], texts["q"]
        if dry_run:
            tasks, letters = await self.db.run(
                lambda conn: deadletter_bulk.count_matching(conn, type=kind, error_contains=text)
            )
            send_json(
                resp,
                {
                    "tasks": tasks,
                    "dead_letters": letters,
                    "task_ids": [],
                    "remaining": tasks,
                    "dry_run": True,
                },
            )
            return
        done = await self.db.run(
            lambda conn: deadletter_bulk.replay_matching(conn, type=kind, error_contains=text)
        )
        self.metrics.replayed.inc(done.tasks)
        log.info(
            "tasks_replayed",
            type=kind,
            q=text,
            tasks=done.tasks,
            dead_letters_replayed=done.dead_letters,
            remaining=done.remaining,
        )
        send_json(
            resp,
            {
                "tasks": done.tasks,
                "dead_letters": done.dead_letters,
                "task_ids": [str(t) for t in done.task_ids],
                "remaining": done.remaining,
                "dry_run": False,
            },
        )


class Health:
    """``GET /api/v1/health`` (always 200) and ``GET /api/v1/ready`` (503 without Postgres)."""

    def __init__(self, deps: Deps, *, strict: bool) -> None:
        self.deps = deps
        self.strict = strict

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report Postgres, NATS and the consumer loop."""
        checks: dict[str, dict[str, Any]] = {}
        started = time.monotonic()
        try:
            await self.deps.db.ping()
            checks["postgres"] = {
                "ok": True,
                "latency_ms": round((time.monotonic() - started) * 1000, 1),
            }
        except UnavailableError as exc:
            checks["postgres"] = {"ok": False, "error": str(exc)}
        bus = self.deps.bus
        checks["nats"] = {"ok": bus.connected, "server_version": bus.server_version or None}
        consumer = self.deps.consumer
        age = None if consumer.last_pull is None else time.monotonic() - consumer.last_pull
        checks["consumer"] = {
            "ok": consumer.last_error is None and age is not None and age < STALE_PULL_S,
            "last_pull_age_s": None if age is None else round(age, 3),
            "recorded": consumer.recorded,
            "duplicates": consumer.duplicates,
            "error": consumer.last_error,
        }
        healthy = all(check["ok"] for check in checks.values())
        body = {
            "status": "ok" if healthy else "degraded",
            "service": "dlq-monitor",
            "checks": checks,
        }
        send_json(resp, body, 503 if self.strict and not checks["postgres"]["ok"] else 200)


def create_app(deps: Deps, tracer: trace.Tracer | None = None) -> ASGIApp:
    """Build the ASGI app around ``deps``; it opens and closes nothing itself.

    The Falcon app is wrapped in :class:`~taskflow_common.http.RequestContext`
    (request ids, a server span per request, request id in log lines, 413 for a body
    declared larger than :data:`MAX_BODY_BYTES`).
    """
    middleware: list[object] = [RouteName(), RequestMetrics(deps.metrics)]
    app = falcon.asgi.App(middleware=middleware)  # type: ignore[arg-type]  # as the ingest API
    install(app)
    app.add_route("/api/v1/dlq", DeadLetterList(deps))
    app.add_route("/api/v1/dlq/stats", DeadLetterStats(deps))
    app.add_route("/api/v1/dlq/replay", BulkReplay(deps))
    app.add_route("/api/v1/dlq/{task_id}", DeadLetterDetail(deps))
    app.add_route("/api/v1/dlq/{task_id}/replay", Replay(deps))
    app.add_route("/api/v1/dlq/{task_id}/discard", Discard(deps))
    app.add_route("/api/v1/health", Health(deps, strict=False))
    app.add_route("/api/v1/ready", Health(deps, strict=True))

    async def refresh_open() -> None:
        deps.metrics.open_by_type(await deps.db.run(deadletters.open_by_type))

    app.add_route("/metrics", MetricsResource(deps.metrics.registry, refresh_open))
    console.add_routes(app)
    schedules.add_routes(app, deps.db)
    return RequestContext(
        app, tracer or trace.get_tracer("taskflow_dlq_monitor"), max_body_bytes=MAX_BODY_BYTES
    )
