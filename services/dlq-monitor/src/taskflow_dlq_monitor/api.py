"""The dlq-monitor's HTTP API (Falcon ASGI): list, stats, detail, replay, discard, health.

Routes (JSON bodies; errors are problem+json, see :mod:`.problems`):

- ``GET /api/v1/dlq?type=&q=&status=&limit=&cursor=`` -> 200
  ``{"items": [DeadLetter], "next_cursor": str | null}``, newest first. ``type`` exact,
  ``q`` a case-insensitive substring of the error or reason, ``status``
  ``open|replayed|discarded``, ``limit`` 1..200 (default 50), ``cursor`` opaque.
- ``GET /api/v1/dlq/stats`` -> 200 counts by type and error over 1h/24h/7d/all
  (:func:`taskflow_common.store.deadletters.stats`).
- ``GET /api/v1/dlq/{id}`` -> 200 ``{"dead_letters": [DeadLetter + raw], "task": Task |
  null, "executions": [Execution]}``; ``id`` is a task id, or a dead letter's own id for
  one that names no task. Unknown -> 404 ``not_found``; not a UUID -> 400 ``invalid_id``.
- ``POST /api/v1/dlq/{task_id}/replay`` -> 200 ``{"task": Task, "dead_letters_replayed":
  int}``; the task is ``queued`` again and the dispatcher publishes it. Not failed or
  cancelled -> 409 ``invalid_state``.
- ``POST /api/v1/dlq/{id}/discard`` -> 200 ``{"items": [DeadLetter]}`` (now
  ``discarded``); already resolved -> 409 ``invalid_state``.
- ``GET /api/v1/health`` -> 200 ``{"status": "ok"|"degraded", "checks": {...}}``;
  ``GET /api/v1/ready`` -> the same body, 503 unless Postgres answers.

DeadLetter JSON is :func:`taskflow_common.store.deadletters.dead_letter_json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import falcon
import falcon.asgi

from taskflow_common import logs
from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.store import deadletters
from taskflow_common.store.rows import execution_json, task_json
from taskflow_common.store.tasks import InvalidCursor
from taskflow_dlq_monitor.consumer import DeadLetterConsumer
from taskflow_dlq_monitor.problems import (
    Problem,
    RequestIdMiddleware,
    install_error_handling,
    invalid_parameter,
    parse_uuid,
    send_json,
)

log = logs.get_logger(__name__)

MAX_FILTER_CHARS = 200
"""Longest accepted ``type`` or ``q`` filter (characters)."""
STALE_PULL_S = 10.0
"""The consumer counts as unhealthy when its last successful pull is older (seconds)."""


@dataclass(frozen=True, slots=True)
class Deps:
    """What the resources need: the pool, the NATS connection and the consumer loop."""

    db: Database
    bus: Bus
    consumer: DeadLetterConsumer


def _text_param(req: falcon.asgi.Request, name: str) -> str | None:
    value = req.get_param(name)
    if value is not None and len(value) > MAX_FILTER_CHARS:
        raise invalid_parameter(name, f"at most {MAX_FILTER_CHARS} characters")
    return value


def _limit(req: falcon.asgi.Request) -> int:
    raw = req.get_param("limit")
    if raw is None:
        return 50
    try:
        value = int(raw)
    except ValueError:
        raise invalid_parameter("limit", "expected a whole number 1..200") from None
    if not 1 <= value <= deadletters.MAX_LIMIT:
        raise invalid_parameter("limit", "expected a whole number 1..200")
    return value


class DeadLetterList:
    """``GET /api/v1/dlq``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List dead letters newest first, filtered and keyset-paginated."""
        type_ = _text_param(req, "type")
        q = _text_param(req, "q")
        raw_status = req.get_param("status")
        if raw_status is not None and raw_status not in deadletters.DEAD_LETTER_STATUSES:
            allowed = ", ".join(deadletters.DEAD_LETTER_STATUSES)
            raise invalid_parameter("status", f"one of {allowed}")
        status: deadletters.DeadLetterStatus | None = raw_status
        limit = _limit(req)
        cursor = req.get_param("cursor")
        if cursor is not None:
            try:
                deadletters.decode_cursor(cursor)
            except InvalidCursor:
                raise Problem(
                    400,
                    "invalid_cursor",
                    "cursor is not one this API returned",
                    errors=[{"field": "cursor", "message": "unknown cursor"}],
                ) from None

        async def fetch(conn: asyncpg.Connection) -> deadletters.Page:
            return await deadletters.list_dead_letters(
                conn,
                type=type_,
                error_contains=q,
                status=status,
                limit=limit,
                cursor=cursor,
            )

        page = await self.db.run(fetch)
        send_json(
            resp,
            {"items": deadletters.dead_letters_json(page.items), "next_cursor": page.next_cursor},
        )


class DeadLetterStats:
    """``GET /api/v1/dlq/stats``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Counts by type, error and status over the stats windows."""
        send_json(resp, await self.db.run(deadletters.stats))


class DeadLetterDetail:
    """``GET /api/v1/dlq/{task_id}``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """A task's dead letters (raw bytes included), the task and its executions."""
        ident = parse_uuid(task_id, "task_id")

        async def fetch(conn: asyncpg.Connection) -> deadletters.Detail:
            # One snapshot for the three reads, so the parts agree with each other.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await deadletters.get(conn, ident)

        detail = await self.db.run(fetch)
        send_json(
            resp,
            {
                "dead_letters": [
                    deadletters.dead_letter_json(r, with_raw=True) for r in detail.dead_letters
                ],
                "task": task_json(detail.task) if detail.task is not None else None,
                "executions": [execution_json(r) for r in detail.executions],
            },
        )


class Replay:
    """``POST /api/v1/dlq/{task_id}/replay``."""

    def __init__(self, deps: Deps) -> None:
        self.db = deps.db

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Queue the failed or cancelled task again with a fresh attempt budget."""
        ident = parse_uuid(task_id, "task_id")
        row = await self.db.run(lambda conn: deadletters.replay(conn, ident))
        replayed = int(row["dead_letters_replayed"])
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

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        """Mark the open dead letters of a task (or one dead letter) as discarded."""
        ident = parse_uuid(task_id, "task_id")
        rows = await self.db.run(lambda conn: deadletters.discard(conn, ident))
        log.info("dead_letters_discarded", id=str(ident), count=len(rows))
        send_json(resp, {"items": deadletters.dead_letters_json(rows)})


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


def create_app(deps: Deps) -> falcon.asgi.App[Any, Any]:
    """Build the ASGI app around ``deps``; it opens and closes nothing itself."""
    app = falcon.asgi.App(middleware=[RequestIdMiddleware()])
    install_error_handling(app)
    app.add_route("/api/v1/dlq", DeadLetterList(deps))
    app.add_route("/api/v1/dlq/stats", DeadLetterStats(deps))
    app.add_route("/api/v1/dlq/{task_id}", DeadLetterDetail(deps))
    app.add_route("/api/v1/dlq/{task_id}/replay", Replay(deps))
    app.add_route("/api/v1/dlq/{task_id}/discard", Discard(deps))
    app.add_route("/api/v1/health", Health(deps, strict=False))
    app.add_route("/api/v1/ready", Health(deps, strict=True))
    return app
