"""The HTTP services' one uvicorn runner (``taskflow_common.http.server.listening``).

No Postgres or NATS: a bare ASGI app on a loopback port.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from taskflow_common.errors import StartupFailed
from taskflow_common.http import Receive, Scope, Send
from taskflow_common.http.server import listening


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message: Any = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": "no"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def test_serves_on_a_free_port_until_the_block_ends() -> None:
    async with listening(hello, "127.0.0.1", 0, setting="TEST_PORT", lifespan=False) as server:
        assert server.port > 0
        answer = await get(server.port)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"hello" in answer
        stop = asyncio.Event()
        stop.set()
        await server.wait(stop)  # returns at once: stop is set
    assert server.serving.done()
    with pytest.raises(ConnectionRefusedError):
        await get(server.port)


async def test_a_port_in_use_is_a_start_failure_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupFailed, match="TEST_PORT"):
            async with listening(hello, "127.0.0.1", port, setting="TEST_PORT", lifespan=False):
                pytest.fail("must not start")


async def test_a_failed_lifespan_start_up_is_a_start_failure() -> None:
    # Plain uvicorn would exit 3 here; a service gets StartupFailed (exit code 1).
    with pytest.raises(StartupFailed, match="could not start serving"):
        async with listening(hello, "127.0.0.1", 0, setting="TEST_PORT", lifespan=True):
            pytest.fail("must not start")
