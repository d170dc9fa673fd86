"""An oversized body is answered 413 to every client, even one still sending (issue 11).

A server that answers before reading the body and then closes the connection leaves the
unread bytes in its socket: the kernel resets the connection, and a client that writes
the whole body before it reads (Python's ``urllib``, most simple clients) sees
``ECONNRESET`` instead of the 413. curl, which reads while it writes, saw the 413.
Here ``urllib`` sends 2 MiB to both HTTP services, with a declared length and chunked.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.procs import ServiceFactory

pytestmark = pytest.mark.e2e

BODY_BYTES = 2 * 1024 * 1024
"""Twice the ingest API's default MAX_BODY_BYTES (1 MiB)."""


def _body() -> bytes:
    return json.dumps({"type": "demo", "payload": "x" * BODY_BYTES}).encode()


def _chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _post(url: str, data: bytes | Iterator[bytes]) -> tuple[int, dict[str, Any]]:
    """POST with urllib (writes the whole body, then reads); return (status, JSON body).

    An iterable body without Content-Length goes out chunked. A connection reset
    propagates (as ``URLError``/``ConnectionResetError``) and fails the test.
    """
    request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - as above
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_ingest_api_answers_413_to_a_client_still_sending(
    service_env: dict[str, str], services: ServiceFactory, framing: str
) -> None:
    await services.start("ingest-api", service_env)
    url = f"http://127.0.0.1:{service_env['HTTP_PORT']}/api/v1/tasks"
    body = _body()
    data: bytes | Iterator[bytes] = body if framing == "content-length" else _chunks(body)
    for _ in range(3):  # a reset is a race: try it more than once
        status, doc = await asyncio.to_thread(_post, url, data)
        assert (status, doc["code"]) == (413, "payload_too_large"), doc
        data = body if framing == "content-length" else _chunks(body)


async def test_dlq_monitor_answers_413_to_a_client_still_sending(
    service_env: dict[str, str], services: ServiceFactory
) -> None:
    await services.start("dlq-monitor", service_env)
    url = f"http://127.0.0.1:{service_env['DLQ_HTTP_PORT']}/api/v1/dlq/replay"
    body = json.dumps({"type": "x" * BODY_BYTES, "dry_run": True}).encode()
    for _ in range(3):
        status, doc = await asyncio.to_thread(_post, url, body)
        assert (status, doc["code"]) == (413, "payload_too_large"), doc
