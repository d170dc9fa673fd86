"""Build the Falcon ASGI app (:func:`create_app`) and serve it (:func:`serve`).

The app owns its resources through the ASGI lifespan: on start-up it opens the asyncpg
pool, starts connecting to NATS in the background (the API takes tasks while NATS is
down: the dispatcher publishes them later) and starts the task-event listener that
wakes long polls and event streams; on shutdown it closes all three. Postgres being
down at start-up does not stop the API either: requests then get 503 ``unavailable`` and
``/api/v1/ready`` says so until Postgres answers. :func:`serve` runs the app with the
services' one uvicorn runner, :func:`taskflow_common.http.server.listening`.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import falcon
import falcon.asgi
import falcon.media
import orjson

from taskflow_common import bus as nats_bus
from taskflow_common import http
from taskflow_common.db import open_pool
from taskflow_common.errors import UnavailableError
from taskflow_common.http import ASGIApp, MetricsResource, RequestContext, RequestMetrics, RouteName
from taskflow_common.http.server import listening
from taskflow_common.lifecycle import ready
from taskflow_common.logs import get_logger
from taskflow_ingest_api.resources import API, Deps, add_routes
from taskflow_ingest_api.schedules import add_schedule_routes
from taskflow_ingest_api.settings import ApiSettings
from taskflow_ingest_api.waiters import TaskEvents

__all__ = ["Deps", "create_app", "serve"]

log = get_logger(__name__)

SERVICE = "ingest-api"
GRACEFUL_SHUTDOWN_S = 10
"""How long in-flight requests may take to finish after SIGTERM (seconds)."""


class Lifespan:
    """Lifespan middleware: opens the pool, NATS and the task-event listener; closes them.

    Only what it opened is closed; ``deps.db``/``deps.bus`` given by the caller are
    left alone.
    """

    def __init__(self, settings: ApiSettings, deps: Deps) -> None:
        self._settings = settings
        self._deps = deps
        self._stack = AsyncExitStack()

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Open the pool (``DB_POOL_MIN`` connections, or none while Postgres is down)."""
        deps, settings = self._deps, self._settings
        if deps.db is None:
            try:
                deps.db = await self._stack.enter_async_context(open_pool(settings))
            except UnavailableError as exc:
                # Start anyway with an empty pool: /ready reports 503 and requests
                # get 503 until Postgres answers; the pool connects on demand.
                log.warning("postgres_unavailable", error=str(exc))
                deps.db = await self._stack.enter_async_context(open_pool(settings, min_size=0))
            self._stack.callback(setattr, deps, "db", None)
        if deps.bus is None:
            deps.bus = await self._stack.enter_async_context(
                nats_bus.connect(settings, SERVICE, wait=False)
            )
            self._stack.callback(setattr, deps, "bus", None)
        if deps.events is None:
            events = deps.events = TaskEvents(settings, errors=deps.metrics.loop_errors)
            stop = asyncio.Event()
            listener = asyncio.create_task(events.run(stop), name="task-events")

            async def stop_listening() -> None:
                events.close()
                stop.set()
                await listener
                deps.events = None

            self._stack.push_async_callback(stop_listening)

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Close what start-up opened (the pool waits for in-flight queries, 5 s max)."""
        await self._stack.aclose()


def create_app(settings: ApiSettings, deps: Deps | None = None) -> ASGIApp:
    """Return the ASGI app: routes, problem+json errors, orjson, middleware, lifespan.

    ``deps`` defaults to a fresh :class:`Deps` (global tracer, pool and NATS opened at
    start-up). The Falcon app is wrapped in :class:`RequestContext`, so request ids,
    spans and the declared-size limit cover every response.
    """
    deps = deps or Deps()
    middleware: list[object] = [RouteName(), RequestMetrics(deps.metrics), Lifespan(settings, deps)]
    app = falcon.asgi.App(middleware=middleware)  # type: ignore[arg-type]
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.strip_url_path_trailing_slash = True
    http.install(app)
    add_routes(app, settings, deps)
    add_schedule_routes(app, settings, deps)
    app.add_route("/metrics", MetricsResource(deps.metrics.registry))
    return RequestContext(
        app,
        deps.tracer,
        settings.max_body_bytes,
        path_limits={f"{API}/tasks/batch": settings.max_batch_body_bytes},
    )


async def serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Serve the API on ``HTTP_HOST:HTTP_PORT`` until ``stop`` is set.

    Logs ``service_ready`` with the bound host and port once uvicorn listens (port 0
    picks a free port). Raises :class:`~taskflow_common.errors.StartupFailed` when the
    port cannot be bound or the lifespan start-up fails.
    """
    deps = Deps()
    async with listening(
        create_app(settings, deps),
        settings.http_host,
        settings.http_port,
        setting="HTTP_PORT",
        lifespan=True,
        graceful_shutdown_s=GRACEFUL_SHUTDOWN_S,
    ) as server:
        ready(host=server.host, port=server.port)
        try:
            await server.wait(stop)
        finally:
            # Answer parked long polls and end event streams now, so that they do not
            # hold the graceful shutdown for its whole timeout.
            if deps.events is not None:
                deps.events.close()
