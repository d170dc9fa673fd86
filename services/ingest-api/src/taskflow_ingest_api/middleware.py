"""Per-request plumbing: request id, server span, log context, body size limit.

:class:`RequestContext` wraps the whole Falcon app as plain ASGI middleware, so what it
does holds for every response, including the ones Falcon never sees:

- ``X-Request-Id``: a client value of 1..200 characters of ``[A-Za-z0-9._-]`` is kept,
  anything else is replaced by a fresh 32-hex id; it is echoed on every response (errors,
  unknown routes and wrong methods included) and bound into every log line.
- One OpenTelemetry SERVER span per request, continuing a W3C ``traceparent`` sent by the
  client; :class:`RouteName` renames it ``<METHOD> <route template>`` once Falcon has
  routed the request. A 5xx marks it as an error.
- Body size: a declared ``Content-Length`` above ``MAX_BODY_BYTES`` is answered with 413
  from the headers alone. Falcon would otherwise wait for the first body chunk, and a
  client sending ``Expect: 100-continue`` would be told to send it. Bodies without a
  length (chunked) are read by :func:`read_body`, which stops at the limit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import falcon
import falcon.asgi
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from taskflow_common import logs, tracing
from taskflow_ingest_api.problems import PROBLEM_JSON, Problem, to_dict

# ASGI callables, typed as falcon.asgi.App.__call__ is.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def too_large(limit: int) -> Problem:
    """Return the 413 ``payload_too_large`` problem for a ``limit``-byte cap.

    ``Connection: close`` tells the client (and uvicorn) that the rest of the body will
    not be read on this connection.
    """
    return Problem(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes",
        headers={"Connection": "close"},
    )


class RequestContext:
    """ASGI middleware around the Falcon app: request id, span, logs, declared-size limit.

    ``app`` is the Falcon app; ``max_body_bytes`` the limit in bytes. Non-HTTP scopes
    (lifespan) pass straight through.
    """

    def __init__(self, app: ASGIApp, tracer: trace.Tracer, max_body_bytes: int) -> None:
        self.app = app
        self._tracer = tracer
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ``headers`` and each pair may be any iterable, even one-shot iterators
        # (falcon.testing passes those): read them once and hand the app a scope
        # holding a plain list of pairs.
        raw_headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers") or ()]
        scope = {**scope, "headers": raw_headers}
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        given = headers.get("x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        method = scope["method"]
        parent = tracing.extract(
            {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
        )
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

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self._limit:
                await _send_problem(send_with_id, too_large(self._limit))
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
            otel_context.detach(otel_token)
            logs.unbind(log_token)


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


async def read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    """Read the whole request body, at most ``limit`` bytes.

    Chunks are counted as they arrive, so a chunked upload of any size costs at most
    ``limit`` plus one chunk of memory before 413 ``payload_too_large`` is raised.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
