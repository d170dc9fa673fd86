"""The HTTP layer of the ingest API: X-Request-Id, 404/405 problems, the bare 500, and
the body size limit over a real socket (uvicorn on a free port, raw HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import falcon.inspect
import falcon.testing
import orjson
import pytest

from taskflow_ingest_api.app import create_app
from tests.support.api import (
    JSON,
    TASKS,
    assert_problem,
    count_tasks,
    execute,
    serving,
    settings_from,
)

# -- X-Request-Id, 404 and 405 --------------------------------------------------------------------


async def test_request_id_is_echoed_on_every_response(api: falcon.testing.ASGIConductor) -> None:
    calls = [
        api.simulate_post(TASKS, json={"type": "demo"}, headers={"X-Request-Id": "rid-201"}),
        api.simulate_get("/nope", headers={"X-Request-Id": "rid-404"}),
        api.simulate_delete(TASKS, headers={"X-Request-Id": "rid-405"}),
        api.simulate_post(TASKS, body=b"{", headers={**JSON, "X-Request-Id": "rid-400"}),
        api.simulate_get("/api/v1/health", headers={"X-Request-Id": "rid-health"}),
    ]
    results = [await call for call in calls]
    assert [r.headers["x-request-id"] for r in results] == [
        "rid-201",
        "rid-404",
        "rid-405",
        "rid-400",
        "rid-health",
    ]
    assert [r.status_code for r in results] == [201, 404, 405, 400, 200]


async def test_unusable_request_ids_are_replaced(api: falcon.testing.ASGIConductor) -> None:
    seen = set()
    for given in [None, "", "has space", "x" * 201, "é"]:
        headers = {} if given is None else {"X-Request-Id": given}
        result = await api.simulate_get("/api/v1/health", headers=headers)
        rid = result.headers["x-request-id"]
        assert rid != given
        assert len(rid) == 32
        seen.add(rid)
    assert len(seen) == 5
    kept = await api.simulate_get("/api/v1/health", headers={"X-Request-Id": "A.b_c-9" * 28})
    assert kept.headers["x-request-id"] == "A.b_c-9" * 28


async def test_unknown_route_and_wrong_method_are_problems(
    api: falcon.testing.ASGIConductor,
) -> None:
    doc = assert_problem(await api.simulate_get("/api/v1/nothing-here"), 404, "not_found")
    assert "/api/v1/nothing-here" in doc["detail"]
    result = await api.simulate_put(TASKS, json={"type": "demo"})
    assert_problem(result, 405, "method_not_allowed")
    assert "POST" in result.headers["allow"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}"), 405, "method_not_allowed")


async def test_unexpected_database_error_is_a_bare_500(
    api: falcon.testing.ASGIConductor, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault, not a mock: the schema is gone under the running API.
    await execute(database_url, "DROP TABLE tasks CASCADE")
    result = await api.simulate_post(
        TASKS, json={"type": "demo"}, headers={"X-Request-Id": "rid-500"}
    )
    doc = assert_problem(result, 500, "internal_error")
    assert result.headers["x-request-id"] == "rid-500"
    assert "tasks" not in result.text
    assert "relation" not in result.text
    assert "asyncpg" not in result.text
    assert doc["detail"] == "the server could not handle the request"
    failed = [r for r in caplog.records if r.getMessage() == "request_failed"]
    assert failed
    assert failed[0].exc_info is not None


# -- body size limit over a real socket -----------------------------------------------------------


@dataclass
class RawResponse:
    """What a raw HTTP/1.1 exchange returned, and how much of the body had been sent."""

    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int


async def raw_post(base: str, head: dict[str, str], body: AsyncIterator[bytes]) -> RawResponse:
    """POST over a bare socket, reading the response while the body is still being sent.

    This is what curl does and what httpx does not: a server that answers 413 early and
    closes the connection is only visible to a client that reads while it writes.
    """
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {TASKS} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            async for chunk in body:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send())
    try:
        status_line, *header_lines = (
            (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        )
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, payload, sent)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def chunked(parts: list[bytes], repeat_last: int = 1) -> AsyncIterator[bytes]:
    """HTTP/1.1 chunked encoding of ``parts``, the last one sent ``repeat_last`` times."""
    for i, part in enumerate(parts):
        for _ in range(repeat_last if i == len(parts) - 1 else 1):
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


async def nothing() -> AsyncIterator[bytes]:
    """A body that never comes."""
    await asyncio.Event().wait()
    yield b""


async def test_oversized_bodies_are_413_without_reading_them(
    api_env: dict[str, str], database_url: str
) -> None:
    limit = 4096
    app = create_app(settings_from(api_env, MAX_BODY_BYTES=str(limit)))
    start, end = b'{"type": "a", "payload": "', b'"}'
    async with serving(app) as base:
        # Declared too large: answered from the headers alone, no body byte sent.
        declared = await raw_post(
            base,
            {**JSON, "Content-Length": str(10 * 1024 * 1024), "X-Request-Id": "big-1"},
            nothing(),
        )
        # Chunked, 64 MiB on its way: answered once the limit is crossed.
        total = 64 * 1024 * 1024
        stream = await raw_post(
            base,
            {**JSON, "Transfer-Encoding": "chunked", "X-Request-Id": "big-2"},
            chunked([start, b"x" * 65536], repeat_last=total // 65536),
        )
        # Chunked and within the limit: accepted.
        fits = await raw_post(
            base,
            {**JSON, "Transfer-Encoding": "chunked"},
            chunked([start, b"x" * 1000, b"x" * 1000, end]),
        )
    for response, rid in ((declared, "big-1"), (stream, "big-2")):
        assert response.status == 413, response
        assert response.headers["content-type"] == "application/problem+json"
        assert orjson.loads(response.body)["code"] == "payload_too_large"
        assert response.headers["x-request-id"] == rid
    assert declared.body_bytes_sent == 0
    assert stream.body_bytes_sent < total / 2, "the server read far past its limit"
    assert fits.status == 201, fits
    assert await count_tasks(database_url) == 1
