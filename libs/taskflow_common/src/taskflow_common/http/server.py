"""Serving an ASGI app with uvicorn inside a TaskFlow service: one way for every service.

:func:`listening` binds the socket itself (so a port in use is a clear start failure
naming the variable), starts uvicorn on it and returns once uvicorn accepts connections;
on exit it lets open requests finish (up to the graceful timeout) and closes the socket.

The service's stop event owns shutdown: :func:`taskflow_common.lifecycle.run_service`
turns SIGTERM/SIGINT into that event, so uvicorn must neither install its own signal
handlers nor re-raise the signal when it exits (it would otherwise end the process with
143 instead of the service's exit code).

Start-up failures raise :class:`~taskflow_common.errors.StartupFailed`, which
``run_service`` turns into exit code 1: the port cannot be bound, or the app's lifespan
start-up failed (where plain ``uvicorn`` would exit 3), or uvicorn stopped before it
started serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn

from taskflow_common.errors import StartupFailed
from taskflow_common.http.context import ASGIApp

GRACEFUL_SHUTDOWN_S = 10
"""How long in-flight requests may take to finish once the server is told to stop (seconds)."""


class _Server(uvicorn.Server):
    # run_service owns SIGTERM/SIGINT (they set the stop event); uvicorn must not
    # replace those handlers or re-raise the signal when it exits.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """A started uvicorn server (see :func:`listening`).

    ``host`` and ``port`` are where it listens (the bound port when 0 was asked for);
    ``serving`` is the task running uvicorn (done when uvicorn has stopped).
    """

    def __init__(
        self, server: uvicorn.Server, serving: asyncio.Task[bool], host: str, port: int
    ) -> None:
        self._server = server
        self.serving = serving
        self.host = host
        self.port = port

    def stop(self) -> None:
        """Tell uvicorn to stop accepting and finish open requests (returns at once)."""
        self._server.should_exit = True

    async def wait(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set or uvicorn has stopped, whichever comes first."""
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({self.serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping


def bind_socket(host: str, port: int, setting: str) -> socket.socket:
    """Bind a listening TCP socket on ``host:port`` (0 = any free port).

    ``setting`` names the variable holding the port, for the error message. Raises
    :class:`~taskflow_common.errors.StartupFailed` naming the address when it cannot be
    bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupFailed(f"cannot listen on {host}:{port} ({setting}): {exc}") from exc
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def listening(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    setting: str,
    lifespan: bool,
    graceful_shutdown_s: int = GRACEFUL_SHUTDOWN_S,
) -> AsyncIterator[HttpServer]:
    """Serve ``app`` on ``host:port`` while the block runs; yield the started server.

    ``setting`` names the port's variable (error messages); ``lifespan`` runs the app's
    ASGI lifespan (Falcon's ``process_startup``/``process_shutdown`` middleware) before
    serving and after stopping. uvicorn runs with ``httptools``, without access log,
    ``Server`` header or logging configuration of its own. On exit the server stops
    (open requests get ``graceful_shutdown_s`` seconds) and the socket is closed.

    Raises :class:`~taskflow_common.errors.StartupFailed` when the port cannot be bound
    or uvicorn does not start (e.g. the lifespan start-up failed; see the log above it).
    """
    sock = bind_socket(host, port, setting)
    try:
        config = uvicorn.Config(
            app,
            http="httptools",
            lifespan="on" if lifespan else "off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        server = _Server(config)
        serving = asyncio.create_task(_serve(server, sock), name="http-server")
        try:
            # uvicorn offers no start-up callback: poll its flag (cheap, start-up only).
            while not server.started and not serving.done():
                await asyncio.wait({serving}, timeout=0.01)
            if not server.started:
                await serving
                raise StartupFailed(
                    f"could not start serving on {host}:{port} ({setting}; see the log above)"
                )
            bound_host, bound_port = sock.getsockname()[:2]
            yield HttpServer(server, serving, bound_host, bound_port)
        finally:
            server.should_exit = True
            await serving
    finally:
        sock.close()


async def _serve(server: uvicorn.Server, sock: socket.socket) -> bool:
    """Run uvicorn on ``sock``; return whether it had started. uvicorn calls sys.exit on
    some start-up failures; turn that into a return value."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit:
        return False
    return server.started
