"""HTTP conventions shared by TaskFlow's Falcon ASGI services (ingest API, dlq-monitor).

Every service answers the same way. Importing this package needs ``falcon`` (>= 4) and,
for :mod:`.server`, ``uvicorn``: the ``http`` extra of ``taskflow-common``, which the
services that use it declare; the rest of ``taskflow_common`` does not import it.

- :mod:`.problems`: RFC 9457 ``application/problem+json`` for every 4xx and 5xx
  (:class:`Problem`, :class:`FieldError`, :func:`install`), body size limits;
- :mod:`.context`: :class:`RequestContext` (request id, server span, logs, declared-size
  limit) and :class:`RouteName`;
- :mod:`.metrics`: :class:`RequestMetrics` and ``GET /metrics`` (:class:`MetricsResource`);
- :mod:`.server`: :func:`~.server.listening`, the one way a service serves its app with
  uvicorn (imported from there, so that the rest does not need uvicorn).

The names below are re-exported here for callers' convenience.
"""

from __future__ import annotations

from taskflow_common.http.context import (
    REQUEST_ID_HEADER,
    ASGIApp,
    Message,
    Receive,
    RequestContext,
    RouteName,
    Scope,
    Send,
)
from taskflow_common.http.metrics import MetricsResource, RequestMetrics
from taskflow_common.http.problems import (
    PROBLEM_JSON,
    TYPE_BASE,
    FieldError,
    Problem,
    install,
    parse_uuid,
    problem_for,
    read_body,
    serialize,
    to_dict,
    too_large,
    validation_error,
)

__all__ = [
    "PROBLEM_JSON",
    "REQUEST_ID_HEADER",
    "TYPE_BASE",
    "ASGIApp",
    "FieldError",
    "Message",
    "MetricsResource",
    "Problem",
    "Receive",
    "RequestContext",
    "RequestMetrics",
    "RouteName",
    "Scope",
    "Send",
    "install",
    "parse_uuid",
    "problem_for",
    "read_body",
    "serialize",
    "to_dict",
    "too_large",
    "validation_error",
]
