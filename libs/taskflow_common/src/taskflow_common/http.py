"""HTTP conventions shared by TaskFlow's Falcon ASGI services (ingest API, dlq-monitor).

Moved here from the ingest API's ``problems.py`` and ``middleware.py`` so that every
service answers the same way. Importing this module needs ``falcon`` (>= 4), which the
services that use it declare; the rest of ``taskflow_common`` does not import it.

**Errors** are RFC 9457 ``application/problem+json`` for every 4xx and 5xx::

    {"type": "https://taskflow.dev/problems/<code>", "title": "...", "status": 422,
     "detail": "...", "code": "validation_error",
     "errors": [{"field": "limit", "message": "must be an integer from 1 to 200"}]}

``code`` is the stable, machine-readable name (snake_case); ``errors`` appears only for
field errors. :func:`install` maps TaskFlow's exceptions and Falcon's own errors (unknown
route, wrong method, ...) onto problems; an unexpected exception becomes a bare 500
``internal_error`` (logged with its traceback, never sent). Common codes: 400
``invalid_id`` (path id not a UUID), 400 ``invalid_cursor``, 404 ``not_found``, 409 from
:class:`~taskflow_common.errors.ConflictError` (``invalid_state``, ...), 422
``validation_error`` (a field or query parameter), 503 ``unavailable``.

**Requests** go through :class:`RequestContext` (plain ASGI middleware around the Falcon
app): ``X-Request-Id`` (client value of 1..200 ``[A-Za-z0-9._-]`` kept, else a fresh
32-hex id) echoed on every response and bound into every log line; one OpenTelemetry
SERVER span per request continuing the client's ``traceparent`` (renamed after the
route by :class:`RouteName`); and, when given a limit, a 413 for a declared
``Content-Length`` above it.

**Metrics**: :class:`RequestMetrics` (Falcon middleware) counts requests and latency by
route template and status; :class:`MetricsResource` serves ``GET /metrics``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from taskflow_common import logs, tracing
from taskflow_common.errors import ConflictError, NotFoundError, TaskFlowError, UnavailableError
from taskflow_common.metrics import CONTENT_TYPE_LATEST, HttpMetrics, render
from taskflow_common.store.tasks import InvalidCursor

log = logs.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://taskflow.dev/problems/"
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# ASGI callables, typed as falcon.asgi.App.__call__ is (so a Falcon app is an ASGIApp).
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Falcon raises these itself (routing, method matching, media); map status -> our code.
_FALCON_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


# -- problems -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one input: ``field`` is a path such as ``payload.a[2]`` or ``limit``."""

    field: str
    message: str


class Problem(falcon.HTTPError):
    """An HTTP error with a stable ``problem_code`` and optional field errors.

    ``status`` is an int (e.g. 422); ``detail`` is a human sentence safe to show;
    ``extensions`` are extra top-level members of the document (RFC 9457 section 3.2),
    e.g. ``{"index": 3}`` naming the bad item of a batch.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            status, title=title, description=detail, headers=dict(headers) if headers else None
        )
        # ``code`` is taken: falcon.HTTPError.code is an optional numeric app code.
        self.problem_code = code
        self.errors = list(errors)
        self.header_map = dict(headers or {})
        self.extensions = dict(extensions or {})


def validation_error(
    errors: Sequence[FieldError], extensions: Mapping[str, Any] | None = None
) -> Problem:
    """Return a 422 ``validation_error`` whose detail summarises the first field error."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem(
        422,
        "validation_error",
        f"{first.field}: {first.message}{more}",
        errors=errors,
        extensions=extensions,
    )


def parse_uuid(value: str, what: str = "task id") -> uuid.UUID:
    """Return the UUID in a path segment; raise 400 ``invalid_id`` unless canonical form."""
    if not _UUID.match(value):
        raise Problem(400, "invalid_id", f"{what} must be a UUID like 0b7c...-...-...-...-...")
    return uuid.UUID(value)


def to_dict(error: falcon.HTTPError, req: falcon.Request | None = None) -> dict[str, Any]:
    """Render any Falcon HTTP error (ours or Falcon's) as the problem document."""
    status = error.status_code
    code = getattr(error, "problem_code", None) or _FALCON_CODES.get(status, f"http_{status}")
    # Falcon's titles are status lines ("404 Not Found"); RFC 9457 wants the phrase.
    title = (error.title or "").removeprefix(f"{status} ") or code
    detail = error.description
    if detail is None and req is not None and status == 404:
        detail = f"there is nothing at {req.path}"
    elif detail is None and req is not None and status == 405:
        detail = f"{req.method} is not allowed on {req.path}"
    doc: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
    }
    # Extensions never replace the standard members.
    for name, value in getattr(error, "extensions", {}).items():
        doc.setdefault(name, value)
    errors: list[FieldError] = getattr(error, "errors", [])
    if errors:
        doc["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return doc


def serialize(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon error serializer: always problem+json, whatever the client accepts."""
    resp.data = orjson.dumps(to_dict(error, req))
    resp.content_type = PROBLEM_JSON


def problem_for(ex: TaskFlowError) -> Problem:
    """The problem a TaskFlow exception becomes (500 ``internal_error`` when unmapped)."""
    if isinstance(ex, NotFoundError):
        return Problem(404, "not_found", str(ex))
    if isinstance(ex, ConflictError):
        return Problem(409, ex.code, str(ex))
    if isinstance(ex, InvalidCursor):
        return Problem(400, "invalid_cursor", str(ex))
    if isinstance(ex, UnavailableError):
        # The message names only the error class, never a DSN or server text.
        return Problem(
            503,
            "unavailable",
            "the database is unavailable; retry later",
            headers={"Retry-After": "1"},
        )
    return _internal()


def _internal() -> Problem:
    return Problem(500, "internal_error", "the server could not handle the request")


async def _handle_taskflow(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: TaskFlowError, params: Any
) -> None:
    problem = problem_for(ex)
    if problem.status_code == 503:
        log.warning("request_unavailable", error=str(ex), path=req.path)
    elif problem.status_code == 500:
        log.error("request_failed", exc=True, path=req.path, method=req.method)
    raise problem


async def _handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    if isinstance(ex, falcon.HTTPError | falcon.HTTPStatus):
        raise ex
    log.error("request_failed", exc=True, path=req.path, method=req.method)
    raise _internal()


def install(app: falcon.asgi.App[Any, Any]) -> None:
    """Register the serializer and the exception -> problem handlers on ``app``."""
    app.set_error_serializer(serialize)
    # Falcon picks the most specific registered class, so order does not matter.
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(TaskFlowError, _handle_taskflow)


# -- request context --------------------------------------------------------------------


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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            length = headers.get("content-length", "")
            limit = self._path_limits.get(scope["path"].rstrip("/"), self._limit)
            if limit is not None and length.isdigit() and int(length) > limit:
                await _send_problem(send_with_id, too_large(limit))
            else:
                await self.app(scope, receive, send_with_id)
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


class RequestMetrics:
    """Falcon middleware: count each request and its latency by route template and status.

    Feeds :class:`taskflow_common.metrics.HttpMetrics`; the route label is the matched
    template (``/api/v1/dlq/{task_id}``), ``unmatched`` for unknown paths, so ids never
    become label values. Latency runs from Falcon receiving the request to the response
    being ready (seconds).
    """

    def __init__(self, metrics: HttpMetrics) -> None:
        self._metrics = metrics

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Note when the request arrived."""
        req.context.metrics_started = time.perf_counter()

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Count the answered request (errors included: Falcon has set their status)."""
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        status = int(str(resp.status).split(" ", 1)[0]) if resp.status else 200
        self._metrics.observe(req.method, req.uri_template, status, time.perf_counter() - started)


class MetricsResource:
    """``GET /metrics``: the service's registry in the Prometheus text format.

    ``refresh`` (optional) runs first, e.g. to read a gauge from Postgres; if it raises
    the scrape still answers with the values held.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._registry = registry
        self._refresh = refresh

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Render the registry (``text/plain; version=0.0.4``)."""
        if self._refresh is not None:
            try:
                await self._refresh()
            except Exception as exc:  # a scrape must not fail because a gauge could not be read
                log.warning("metrics_refresh_failed", error=f"{exc.__class__.__name__}: {exc}")
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = render(self._registry)


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
