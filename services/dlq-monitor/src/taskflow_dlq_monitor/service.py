"""Wiring: Postgres pool, NATS connection, the consumer loop and the HTTP server.

Start order: the pool (opened empty while Postgres is down, so nothing waits on it), the
NATS connection (in the background: the API serves replays even while NATS is down), the
listening socket (bound here, so a port in use is a clear start failure, exit 1), then
the consumer loop and uvicorn. ``service_ready`` is logged once the first pull
succeeded and the server accepts connections. On stop: uvicorn finishes open requests,
the consumer leaves unacked messages for redelivery, NATS is drained, the pool closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from contextlib import AsyncExitStack

import uvicorn

from taskflow_common import bus as bus_mod
from taskflow_common import logs
from taskflow_common.db import Database, open_pool
from taskflow_common.errors import TaskFlowError, UnavailableError
from taskflow_common.lifecycle import ready
from taskflow_common.metrics import DlqMetrics, new_registry
from taskflow_dlq_monitor.api import Deps, create_app
from taskflow_dlq_monitor.consumer import DeadLetterConsumer, wait_stop
from taskflow_dlq_monitor.settings import DlqSettings

log = logs.get_logger(__name__)

SERVICE = "dlq-monitor"


class StartError(TaskFlowError):
    """The service cannot start (e.g. its HTTP port is taken); exit code 1."""


class _Server(uvicorn.Server):
    # run_service owns SIGTERM/SIGINT (they set the stop event); uvicorn must not
    # replace those handlers or re-raise the signal when it exits.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket on ``host:port`` (0 = any free port).

    Raises :class:`StartError` naming the address when it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {host}:{port} (DLQ_HTTP_PORT): {exc}") from exc
    sock.setblocking(False)
    return sock


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
    """Run the dlq-monitor until ``stop`` is set."""
    async with AsyncExitStack() as stack:
        db = await open_database(settings, stack)
        bus = await stack.enter_async_context(
            bus_mod.connect(settings, SERVICE, stop=stop, wait=False)
        )
        sock = bind_socket(settings.http_host, settings.http_port)
        stack.callback(sock.close)
        port = sock.getsockname()[1]

        metrics = DlqMetrics(new_registry())
        consumer = DeadLetterConsumer(
            db,
            bus,
            batch_size=settings.batch_size,
            poll_interval_s=settings.poll_interval,
            metrics=metrics,
        )
        server = _Server(
            uvicorn.Config(
                create_app(Deps(db, bus, consumer, metrics)),
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=10,
            )
        )
        consuming = asyncio.create_task(consumer.run(stop), name="dlq-consumer")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="dlq-http")
        try:
            if await _until_ready(consumer, server, stop, (consuming, serving)):
                ready(host=settings.http_host, port=port, consumer=bus.names.dlq_consumer)
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {stopping, consuming, serving}, return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            for task in done - {stopping}:
                if not stop.is_set():
                    log.error("service_part_exited", part=task.get_name())
                task.result()  # re-raise what ended it early
        finally:
            stop.set()
            server.should_exit = True
            await asyncio.gather(serving, consuming, return_exceptions=True)


async def _until_ready(
    consumer: DeadLetterConsumer,
    server: uvicorn.Server,
    stop: asyncio.Event,
    tasks: tuple[asyncio.Task[None], ...],
) -> bool:
    """Wait until consuming and listening (True), or ``stop`` or a part ending (False)."""
    while not (consumer.consuming.is_set() and server.started):
        if stop.is_set() or any(t.done() for t in tasks):
            return False
        await wait_stop(stop, 0.02)
    return True
