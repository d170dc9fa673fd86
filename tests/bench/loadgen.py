"""A lean HTTP/1.1 load generator, and a no-op server to measure its ceiling.

Run as its own process so its CPU shows up apart from the stack's::

    python -m tests.bench.loadgen run --url http://127.0.0.1:8080/api/v1/tasks \\
        --body '{"type":"demo"}' --requests 10000 --concurrency 50 [--rate 200]
    python -m tests.bench.loadgen serve --port 18080

``run`` opens ``--concurrency`` keep-alive connections (asyncio protocols on uvloop),
sends one pre-built request per connection at a time and parses only the status line
and ``Content-Length`` of each answer. Without ``--rate`` it is closed-loop (each
connection sends its next request as soon as the previous answer is in: a burst);
with ``--rate`` it is open-loop: request ``i`` is due at ``start + i / rate`` and goes
out on the next idle connection (a late send is counted, never skipped). It prints one
JSON object on stdout: ``requests``, ``status`` (count per code), ``errors``,
``elapsed_s``, ``req_per_s``, ``cpu_s`` (its own user+system CPU while sending),
``late_sends`` and the client-side latency percentiles in ms.

``serve`` answers every request with a fixed ``201`` and a small JSON body (no
parsing beyond framing): the generator's ceiling is measured against it.

Loops are bounded: ``--requests`` caps the count and ``--timeout`` (default 600 s) the
time; connection errors reconnect at most ``--max-errors`` times in all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

NOOP_BODY = b'{"task":{"id":"00000000-0000-0000-0000-000000000000","status":"queued"}}'
NOOP_RESPONSE = (
    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(NOOP_BODY)).encode()
    + b"\r\n\r\n"
    + NOOP_BODY
)


def build_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """Return the bytes of one keep-alive ``POST url`` with a JSON ``body``."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentile(sorted_values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``sorted_values`` by linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class ResponseParser:
    """Frame HTTP/1.1 responses: status code and body length only (or chunked, crudely)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> int | None:
        """Add ``data``; return the status code once one whole response is in, else None."""
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return None
            del self.buf[:total]
            return status
        if b"chunked" in head:
            last = self.buf.find(b"\r\n0\r\n\r\n", end)
            if last < 0:
                if self.buf[end + 4 : end + 9] == b"0\r\n\r\n":
                    del self.buf[: end + 9]
                    return status
                return None
            del self.buf[: last + 7]
            return status
        del self.buf[: end + 4]  # no body (e.g. 204)
        return status


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        status = self.parser.feed(data)
        if status is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("server closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, data: bytes) -> asyncio.Future[int]:
        """Send ``data``; return a future for the response's status code."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        """Close the transport."""
        if self.transport is not None:
            self.transport.close()


class Generator:
    """Sends ``requests`` copies of one request over ``concurrency`` connections."""

    def __init__(
        self, host: str, port: int, data: bytes, requests: int, concurrency: int, max_errors: int
    ) -> None:
        self.host, self.port, self.data = host, port, data
        self.requests = requests
        self.concurrency = max(1, min(concurrency, requests))
        self.max_errors = max_errors
        self.status: Counter[int] = Counter()
        self.errors = 0
        self.latencies: list[float] = []
        self.late = 0
        self.next = 0

    async def connect(self) -> Connection:
        """Open one connection (TCP_NODELAY is asyncio's default for TCP)."""
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(Connection, self.host, self.port)
        return proto

    async def send(self, conn: Connection) -> Connection:
        """Send one request on ``conn`` (reconnecting after an error); record the outcome."""
        while True:
            started = time.perf_counter()
            try:
                status = await conn.request(self.data)
            except (ConnectionError, OSError):
                self.errors += 1
                if self.errors > self.max_errors:
                    raise
                conn.close()
                conn = await self.connect()
                continue
            self.latencies.append(time.perf_counter() - started)
            self.status[status] += 1
            return conn

    async def closed_loop(self, conn: Connection) -> None:
        """Send requests back to back on ``conn`` until the shared count runs out."""
        while self.next < self.requests:
            self.next += 1
            conn = await self.send(conn)
        conn.close()

    async def open_loop(self, conns: list[Connection], rate: float) -> None:
        """Send request ``i`` at ``start + i / rate`` on the next idle connection."""
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        pending: set[asyncio.Task[None]] = set()

        async def one(conn: Connection) -> None:
            conn = await self.send(conn)
            idle.put_nowait(conn)

        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.requests):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: the schedule, not a synchronisation
            elif delay < -0.001:
                self.late += 1
            conn = await idle.get()
            task = asyncio.create_task(one(conn))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        for c in conns:
            c.close()

    async def run(self, rate: float | None, timeout: float) -> dict[str, Any]:
        """Connect, send everything (bounded by ``timeout`` s), return the summary."""
        conns = [await self.connect() for _ in range(self.concurrency)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        work: Awaitable[Any]
        if rate:
            work = self.open_loop(conns, rate)
        else:
            work = asyncio.gather(*(self.closed_loop(c) for c in conns))
        timed_out = False
        try:
            await asyncio.wait_for(work, timeout)
        except TimeoutError:
            timed_out = True
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        lat = sorted(self.latencies)
        done = sum(self.status.values())
        return {
            "requests": done,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "errors": self.errors,
            "timed_out": timed_out,
            "elapsed_s": elapsed,
            "req_per_s": done / elapsed if elapsed > 0 else 0.0,
            "cpu_s": cpu,
            "late_sends": self.late,
            "latency_ms": {
                q: percentile(lat, p) * 1000
                for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
        }


class NoopServer(asyncio.Protocol):
    """Answer each framed request with :data:`NOOP_RESPONSE`; parse framing only."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                break
            del self.buf[: end + 4 + length]
            out.append(NOOP_RESPONSE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(port: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NoopServer, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await asyncio.sleep(seconds)  # bounded lifetime; the harness stops it sooner


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``run`` or ``serve``."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.loadgen")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="send requests, print a JSON summary")
    run.add_argument("--url", required=True)
    run.add_argument("--body", required=True, help="the JSON body, sent as is")
    run.add_argument("--requests", type=int, required=True)
    run.add_argument("--concurrency", type=int, default=50)
    run.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    run.add_argument("--timeout", type=float, default=600.0)
    run.add_argument("--max-errors", type=int, default=100)
    serve = sub.add_parser("serve", help="a no-op HTTP server on 127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    _use_uvloop()
    if args.cmd == "serve":
        asyncio.run(_serve(args.port, args.seconds))
        return 0
    parts = urlsplit(args.url)
    gen = Generator(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        build_request(args.url, args.body.encode()),
        args.requests,
        args.concurrency,
        args.max_errors,
    )
    summary = asyncio.run(gen.run(args.rate, args.timeout))
    print(json.dumps(summary), flush=True)
    return 0 if not summary["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
