"""Per-request context around a Falcon app: request id, server span, logs, size limit.

:class:`RequestContext` is plain ASGI middleware: ``X-Request-Id`` (client value of
1..200 ``[A-Za-z0-9._-]`` kept, else a fresh 32-hex id) echoed on every response and
bound into every log line; one OpenTelemetry SERVER span per request continuing the
client's ``traceparent`` (renamed after the route by :class:`RouteName`, Falcon
middleware); and, when given a limit, a 413 for a declared ``Content-Length`` above it.

Every 413 (this one, or the app's once :func:`~taskflow_common.http.problems.read_body`
crossed its limit) is sent at once, and the request's unread body is then read and
dropped (up to :data:`DRAIN_MAX_BYTES`, :data:`DRAIN_IDLE_S`, :data:`DRAIN_MAX_S`) before
the response ends and the connection closes. Closing a socket that still holds unread
request bytes resets the connection: a client that writes its whole body before reading
(Python's ``urllib``) would see ``ECONNRESET`` instead of the 413; one that reads while
it writes (curl) reads the 413 at once either way.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import falcon.asgi
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from taskflow_common import logs, tracing
from taskflow_common.http.problems import PROBLEM_JSON, Problem, to_dict, too_large

DRAIN_MAX_BYTES = 16 * 1024 * 1024
"""Most bytes of an oversized body read and dropped after its 413 (past that, reset)."""
DRAIN_IDLE_S = 1.0
"""Stop dropping an oversized body once the client has sent nothing for this long (s)."""
DRAIN_MAX_S = 10.0
"""Stop dropping an oversized body after this long in all (seconds)."""

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

# ASGI callables, typed as falcon.asgi.App.__call__ is (so a Falcon app is an ASGIApp).
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestContext:
    """ASGI middleware around a Falcon app: request id, span, logs, declared-size limit.

    ``app`` is the Falcon app; ``max_body_bytes`` the body limit in bytes (None: no
    limit checked here); ``path_limits`` overrides it for exact paths (e.g. a batch
    route taking larger bodies; a trailing slash is ignored). Non-HTTP scopes
    (lifespan) pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        tracer: trace.Tracer,
        max_body_bytes: int | None = None,
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self._tracer = tracer
        self._limit = max_body_bytes
        self._path_limits = {k.rstrip("/"): v for k, v in (path_limits or {}).items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ``headers`` and each pair may be any iterable, even one-shot iterators
        # (falcon.testing passes those): read them once and hand the app a scope
        # holding a plain list of pairs.
        raw = scope.get("headers") or ()
        if type(raw) is not list or not all(_plain(pair) for pair in raw):
            scope = {**scope, "headers": [(bytes(k), bytes(v)) for k, v in raw]}
        headers = _wanted_headers(scope["headers"])
        given = headers.get("x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        method = scope["method"]
        # No traceparent (the common case): a new trace, without a propagator call.
        parent = tracing.extract(_trace_headers(headers)) if "traceparent" in headers else _ROOT
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "http.request.id": request_id,
            },
        )
        otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        log_token = logs.bind(request_id=request_id)
        status = 500
        echo = (b"x-request-id", request_id.encode())
        body = _Body(receive)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            elif status == 413 and not message.get("more_body", False) and not body.ended:
                # The answer goes out now (the client may be reading while it sends);
                # the response ends, and uvicorn closes, once the body was dropped.
                await send({**message, "more_body": True})
                await body.discard(DRAIN_MAX_BYTES)
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        try:
            length = headers.get("content-length", "")
            limit = self._path_limits.get(scope["path"].rstrip("/"), self._limit)
            if limit is not None and length.isdigit() and int(length) > limit:
                await _send_problem(send_with_id, too_large(limit))
            else:
                await self.app(scope, body.receive, send_with_id)
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
            otel_context.detach(otel_token)
            logs.unbind(log_token)


_ROOT = otel_context.Context()
"""The empty context: a request without ``traceparent`` starts a new trace."""
_WANTED = {
    b"x-request-id": "x-request-id",
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
    b"content-length": "content-length",
}


class _Body:
    """The request's ``receive``, noting whether the body has ended, and its drain."""

    __slots__ = ("_receive", "ended")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.ended = False
        """True once the last body message (or a disconnect) was received."""

    async def receive(self) -> Mapping[str, Any]:
        """The ASGI ``receive`` handed to the app."""
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.ended = True
        return message

    async def discard(self, budget: int) -> int:
        """Read and drop the rest of the body; return the bytes dropped.

        Stops at its end (or a disconnect), after ``budget`` bytes, when nothing came
        for :data:`DRAIN_IDLE_S`, or after :data:`DRAIN_MAX_S` in all.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_MAX_S
        dropped = 0
        while not self.ended and dropped < budget:
            try:
                async with asyncio.timeout(min(DRAIN_IDLE_S, deadline - loop.time())):
                    message = await self.receive()
            except TimeoutError:
                break
            dropped += len(message.get("body", b""))
        return dropped


def _plain(pair: Any) -> bool:
    return type(pair) is tuple and type(pair[0]) is bytes and type(pair[1]) is bytes


def _wanted_headers(pairs: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    # Only the headers this middleware reads are decoded (names arrive lower-cased,
    # ASGI spec; values are latin-1 bytes); for a repeated one the last wins.
    found: dict[str, str] = {}
    for name, value in pairs:
        key = _WANTED.get(name)
        if key is not None:
            found[key] = value.decode("latin-1")
    return found


def _trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}


async def _send_problem(send: Send, problem: Problem) -> None:
    body = orjson.dumps(to_dict(problem))
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.header_map.items()]
    await send({"type": "http.response.start", "status": problem.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouteName:
    """Falcon middleware: name the current server span after the matched route."""

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        """Rename the span ``<METHOD> <uri_template>`` (low cardinality: no ids)."""
        if req.uri_template:
            span = trace.get_current_span()
            span.update_name(f"{req.method} {req.uri_template}")
            span.set_attribute("http.route", req.uri_template)
