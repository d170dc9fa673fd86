"""HTTP resources for schedules: define, read, list, change, pause/resume, run now, delete.

Routes (the OpenAPI document, :mod:`taskflow_ingest_api.openapi.schedules`, is the
reference)::

    POST   /api/v1/schedules                 201 {"schedule": Schedule} + Location
                                             409 schedule_exists | 422 validation_error
    GET    /api/v1/schedules                 200 {"items": [Schedule], "next_cursor"}
                                             (?paused=true|false ?limit ?cursor; by name)
    GET    /api/v1/schedules/{name}          200 {"schedule": Schedule}
    PATCH  /api/v1/schedules/{name}          200 {"schedule": Schedule} (merged; re-timed
                                             when the cadence changed)
    DELETE /api/v1/schedules/{name}          204 (its tasks stay)
    POST   /api/v1/schedules/{name}/pause    200 {"schedule": Schedule}
    POST   /api/v1/schedules/{name}/resume   200 {"schedule": Schedule}
    POST   /api/v1/schedules/{name}/run      201 {"task": Task} + Location (one task now)

An unknown name is 404 ``not_found``. The SQL is :mod:`taskflow_common.store.schedules`;
every change bumps the schedule's version, whose NOTIFY wakes the dispatchers' schedule
loops at once. Bodies are checked by :mod:`taskflow_ingest_api.schedule_validation`.
"""

from __future__ import annotations

from dataclasses import replace

import falcon
import falcon.asgi

from taskflow_common import tracing
from taskflow_common.http import read_body
from taskflow_common.logs import get_logger
from taskflow_common.store import schedules as store
from taskflow_common.store.rows import task_json
from taskflow_common.store.schedules import schedule_json, spec_of
from taskflow_ingest_api.deps import Deps
from taskflow_ingest_api.resources import API
from taskflow_ingest_api.schedule_validation import (
    apply_change,
    check_name,
    parse_change,
    parse_list_query,
    parse_schedule,
)
from taskflow_ingest_api.settings import ApiSettings
from taskflow_ingest_api.validation import check_content_type

__all__ = ["add_schedule_routes"]

log = get_logger(__name__)

SCHEDULES = f"{API}/schedules"


class SchedulesResource:
    """``/api/v1/schedules``: create and list."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Store a new schedule: 201 ``{"schedule"}``; 409 ``schedule_exists``; 422.

        Nothing is stored unless the whole body is valid; its first tick is the first
        one after now (by the database clock).
        """
        check_content_type(req.content_type)
        raw = await read_body(req, self._settings.max_body_bytes)
        spec = parse_schedule(raw, max_depth=self._settings.max_json_depth)
        async with self._deps.database().acquire() as conn:
            row = await store.create(conn, spec)
        resp.status = falcon.HTTP_201
        resp.location = f"{SCHEDULES}/{spec.name}"
        resp.media = {"schedule": schedule_json(row)}
        log.info(
            "schedule_created",
            schedule=spec.name,
            cron=spec.cadence.cron,
            every_s=spec.cadence.every_s,
            next_fire_at=resp.media["schedule"]["next_fire_at"],
        )

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List schedules by name, one keyset page at a time."""
        query = parse_list_query(req.params)
        async with self._deps.database().acquire() as conn:
            page = await store.list_schedules(
                conn, paused=query.paused, limit=query.limit, cursor=query.cursor
            )
        resp.media = {
            "items": [schedule_json(r) for r in page.rows],
            "next_cursor": page.next_cursor,
        }


class ScheduleResource:
    """``/api/v1/schedules/{name}`` and its actions (``/pause``, ``/resume``, ``/run``)."""

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """Return ``{"schedule"}`` with its last and next fire times and last run's status."""
        async with self._deps.database().acquire() as conn:
            row = await store.get(conn, check_name(name))
        resp.media = {"schedule": schedule_json(row)}

    async def on_patch(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Change a schedule: lock the row, merge the body into it, store, answer it.

        A changed cadence re-times the schedule (its next tick is the first after now);
        otherwise the stored next tick stays. 404, 422 (nothing changed).
        """
        check_name(name)
        check_content_type(req.content_type)
        raw = await read_body(req, self._settings.max_body_bytes)
        change = parse_change(raw, max_depth=self._settings.max_json_depth)
        async with self._deps.database().acquire() as conn, conn.transaction():
            current = await store.lock(conn, name)
            merged = apply_change(spec_of(current), change)
            next_fire_at = (
                merged.spec.cadence.first_tick(await store.db_now(conn)) if merged.retimed else None
            )
            row = await store.replace(conn, merged.spec, next_fire_at=next_fire_at)
        resp.media = {"schedule": schedule_json(row)}
        log.info("schedule_changed", schedule=name, retimed=merged.retimed)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Delete the schedule: 204; the tasks it made stay (and keep its name). 404."""
        async with self._deps.database().acquire() as conn:
            await store.delete(conn, check_name(name))
        resp.status = falcon.HTTP_204
        log.info("schedule_deleted", schedule=name)

    async def on_post_pause(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Pause: no tick fires until resumed (its next fire time is kept). Idempotent."""
        await self._set_paused(resp, name, paused=True)

    async def on_post_resume(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Resume: the ticks missed while paused follow the missed-tick policy. Idempotent."""
        await self._set_paused(resp, name, paused=False)

    async def _set_paused(self, resp: falcon.asgi.Response, name: str, *, paused: bool) -> None:
        check_name(name)
        async with self._deps.database().acquire() as conn, conn.transaction():
            current = await store.lock(conn, name)
            if current["paused"] == paused:
                row = await store.get(conn, name)
            else:
                row = await store.replace(conn, replace(spec_of(current), paused=paused))
        resp.media = {"schedule": schedule_json(row)}
        log.info("schedule_paused" if paused else "schedule_resumed", schedule=name)

    async def on_post_run(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Create one task from the schedule's template now: 201 ``{"task"}`` + Location.

        Paused or not; ``scheduled_for`` is the moment of the request, and the task
        becomes the schedule's last run. 404.
        """
        check_name(name)
        async with self._deps.database().acquire() as conn:
            row = await store.run_now(
                conn,
                name,
                default_max_attempts=self._settings.worker_max_attempts,
                trace_parent=tracing.current_traceparent(),
            )
        task_id = str(row["id"])
        resp.status = falcon.HTTP_201
        resp.location = f"{API}/tasks/{task_id}"
        resp.media = {"task": task_json(row)}
        self._deps.metrics.task_submitted(row["type"], row["priority"])
        log.info("schedule_run", schedule=name, task_id=task_id)


def add_schedule_routes(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    settings: ApiSettings,
    deps: Deps,
) -> None:
    """Mount the schedule resources on ``app`` under ``/api/v1/schedules``."""
    one = ScheduleResource(settings, deps)
    app.add_route(SCHEDULES, SchedulesResource(settings, deps))
    app.add_route(f"{SCHEDULES}/{{name}}", one)
    for action in ("pause", "resume", "run"):
        app.add_route(f"{SCHEDULES}/{{name}}/{action}", one, suffix=action)
