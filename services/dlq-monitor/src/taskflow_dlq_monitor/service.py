"""Wiring: Postgres pool, NATS connection, the consumer loop and the HTTP server.

Start order: the pool (opened empty while Postgres is down, so nothing waits on it), the
NATS connection (in the background: the API serves replays even while NATS is down), the
HTTP server (:func:`taskflow_common.http.server.listening`: a port in use is a clear
start failure, exit 1), then the consumer loop. ``service_ready`` is logged once the
first pull succeeded and the server accepts connections. On stop: uvicorn finishes open
requests, the consumer leaves unacked messages for redelivery, NATS is drained, the pool
closed.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from taskflow_common import bus as bus_mod
from taskflow_common import logs
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import UnavailableError
from taskflow_common.http.server import HttpServer, listening
from taskflow_common.lifecycle import ready
from taskflow_common.loops import LoopErrors
from taskflow_common.metrics import new_registry
from taskflow_dlq_monitor.api import Deps, create_app
from taskflow_dlq_monitor.consumer import DeadLetterConsumer, wait_stop
from taskflow_dlq_monitor.metrics import DlqMetrics
from taskflow_dlq_monitor.settings import DlqSettings

log = logs.get_logger(__name__)

SERVICE = "dlq-monitor"


async def open_database(settings: DlqSettings, stack: AsyncExitStack) -> Database:
    """Open the pool; while Postgres is down, open it empty so the service still starts.

    The empty pool (no connection made at start) connects on first use, so the API
    answers 503 ``unavailable`` and ``/health`` reports Postgres down until it is back,
    and the consumer keeps its message and retries.
    """
    try:
        return await stack.enter_async_context(open_pool(settings))
    except UnavailableError as exc:
        log.warning("postgres_unavailable", error=str(exc))
        return await stack.enter_async_context(open_pool(settings, min_size=0))


async def main(settings: DlqSettings, stop: asyncio.Event) -> None:
    """Run the dlq-monitor until ``stop`` is set.

    Raises :class:`~taskflow_common.errors.StartupFailed` when the HTTP port
    (``DLQ_HTTP_PORT``) cannot be bound.
    """
    async with AsyncExitStack() as stack:
        db = await open_database(settings, stack)
        bus = await stack.enter_async_context(
            bus_mod.connect(settings, SERVICE, stop=stop, wait=False)
        )
        metrics = DlqMetrics(new_registry())
        consumer = DeadLetterConsumer(
            db,
            bus,
            batch_size=settings.batch_size,
            poll_interval_s=settings.poll_interval,
            metrics=metrics,
            loop_errors=LoopErrors(metrics.registry),
        )
        server = await stack.enter_async_context(
            listening(
                create_app(Deps(db, bus, consumer, metrics)),
                settings.http_host,
                settings.http_port,
                setting="DLQ_HTTP_PORT",
                lifespan=False,
            )
        )
        consuming = asyncio.create_task(consumer.run(stop), name="dlq-consumer")
        try:
            if await _until_ready(consumer, stop, (consuming, server.serving)):
                ready(host=settings.http_host, port=server.port, consumer=bus.names.dlq_consumer)
            await _until_a_part_ends(stop, consuming, server)
        finally:
            stop.set()
            server.stop()
            await asyncio.gather(consuming, return_exceptions=True)


async def _until_a_part_ends(
    stop: asyncio.Event, consuming: asyncio.Task[None], server: HttpServer
) -> None:
    """Return when ``stop`` is set; a part that ends before is logged and re-raised."""
    stopping = asyncio.create_task(stop.wait())
    parts: dict[asyncio.Task[object], str] = {consuming: "dlq-consumer", server.serving: "dlq-http"}
    done, _ = await asyncio.wait({stopping, *parts}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    for task in done - {stopping}:
        if not stop.is_set():
            log.error("service_part_exited", part=parts[task])
        task.result()  # re-raise what ended it early


async def _until_ready(
    consumer: DeadLetterConsumer,
    stop: asyncio.Event,
    tasks: tuple[asyncio.Task[None] | asyncio.Task[bool], ...],
) -> bool:
    """Wait until the consumer consumes (True), or ``stop`` or a part ending (False)."""
    while not consumer.consuming.is_set():
        if stop.is_set() or any(t.done() for t in tasks):
            return False
        await wait_stop(stop, 0.02)
    return True
