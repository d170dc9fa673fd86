"""RFC 9457 problem documents: every 4xx and 5xx of TaskFlow's HTTP services.

::

    {"type": "https://taskflow.dev/problems/<code>", "title": "...", "status": 422,
     "detail": "...", "code": "validation_error",
     "errors": [{"field": "limit", "message": "must be an integer from 1 to 200"}]}

``code`` is the stable, machine-readable name (snake_case); ``errors`` appears only for
field errors. :func:`install` maps TaskFlow's exceptions and Falcon's own errors (unknown
route, wrong method, ...) onto problems; an unexpected exception becomes a bare 500
``internal_error`` (logged with its traceback, never sent). Common codes: 400
``invalid_id`` (path id not a UUID), 400 ``invalid_cursor``, 404 ``not_found``, 409 from
:class:`~taskflow_common.errors.ConflictError` (``invalid_state``, ...), 413
``payload_too_large``, 422 ``validation_error`` (a field or query parameter), 503
``unavailable``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
import orjson

from taskflow_common import logs
from taskflow_common.errors import (
    ConflictError,
    InvalidCursor,
    NotFoundError,
    TaskFlowError,
    UnavailableError,
)

log = logs.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://taskflow.dev/problems/"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

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


def too_large(limit: int) -> Problem:
    """Return the 413 ``payload_too_large`` problem for a ``limit``-byte cap.

    ``Connection: close`` tells the client (and uvicorn) that the connection ends with
    this answer. :class:`~taskflow_common.http.context.RequestContext` sends it while
    the rest of the body is still arriving, then drops that rest (bounded) before the
    connection closes, so that every client reads the 413.
    """
    return Problem(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes",
        headers={"Connection": "close"},
    )


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
