"""Per-request middleware: request id, server span, log context, body size limit.

- ``X-Request-Id``: a client value of 1..200 characters of ``[A-Za-z0-9._-]`` is kept,
  anything else is replaced by a fresh 32-hex id; it is echoed on every response (errors,
  unknown routes and wrong methods included) and bound into every log line.
- One OpenTelemetry SERVER span per request, continuing a W3C ``traceparent`` sent by the
  client, named ``<METHOD> <route template>``, marked as an error on 5xx.
- Body size: a ``Content-Length`` above ``MAX_BODY_BYTES`` is refused with 413 before a
  byte is read; bodies without a length (chunked) are read by :func:`read_body`, which
  stops at the limit instead of buffering the rest.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import falcon
import falcon.asgi
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from taskflow_common import logs, tracing
from taskflow_ingest_api.problems import Problem

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def too_large(limit: int) -> Problem:
    """Return the 413 ``payload_too_large`` problem for a ``limit``-byte cap.

    ``Connection: close`` tells the client (and uvicorn) not to keep sending on this
    connection: the rest of the body is never read.
    """
    return Problem(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes",
        headers={"Connection": "close"},
    )


class RequestContext:
    """Request id, tracing span and log context for each request (first middleware)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Pick the request id, start the span, bind ``request_id`` to log lines."""
        given = req.get_header(REQUEST_ID_HEADER)
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        req.context.request_id = request_id
        parent = tracing.extract(
            {k: v for k in ("traceparent", "tracestate") if (v := req.get_header(k))}
        )
        span = self._tracer.start_span(
            req.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": req.method,
                "url.path": req.path,
                "http.request.id": request_id,
            },
        )
        req.context.span = span
        req.context.otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        req.context.log_token = logs.bind(request_id=request_id)

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        """Name the span after the matched route (``GET /api/v1/tasks/{task_id}``)."""
        span = req.context.get("span")
        if span is not None and req.uri_template:
            span.update_name(f"{req.method} {req.uri_template}")
            span.set_attribute("http.route", req.uri_template)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Echo the request id, finish the span, unbind the log context."""
        request_id = req.context.get("request_id")
        if request_id is not None:
            resp.set_header(REQUEST_ID_HEADER, request_id)
        span = req.context.get("span")
        if span is not None:
            status = resp.status_code
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
            otel_context.detach(req.context.otel_token)
        token = req.context.get("log_token")
        if token is not None:
            logs.unbind(token)


class BodyLimit:
    """Refuse a declared ``Content-Length`` above ``limit`` bytes with 413, unread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Raise 413 ``payload_too_large`` when the declared length exceeds the limit."""
        length = req.content_length
        if length is not None and length > self.limit:
            raise too_large(self.limit)


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
