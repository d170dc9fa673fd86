"""Errors as RFC 9457 ``application/problem+json``, for every 4xx and 5xx the API sends.

Body shape::

    {"type": "https://taskflow.dev/problems/<code>", "title": "...", "status": 422,
     "detail": "...", "code": "validation_error",
     "errors": [{"field": "priority", "message": "must be one of: high, normal, low"}]}

``code`` is the stable, machine-readable name (snake_case); ``errors`` appears only for
field errors. :func:`install` registers the handlers that map TaskFlow's exceptions and
Falcon's own errors (unknown route, wrong method, ...) onto problems; an unexpected
exception becomes a bare 500 ``internal_error`` (logged with its traceback, never sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
import orjson

from taskflow_common.errors import (
    ConflictError,
    NotFoundError,
    TaskFlowError,
    UnavailableError,
)
from taskflow_common.logs import get_logger
from taskflow_common.store.tasks import InvalidCursor

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://taskflow.dev/problems/"

# Falcon raises these itself (routing, method matching, media); map status → our code.
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
    """One problem with one input: ``field`` is a path such as ``payload.a[2]``."""

    field: str
    message: str


class Problem(falcon.HTTPError):
    """An HTTP error with a stable ``problem_code`` and optional field errors.

    ``status`` is an int (e.g. 422); ``detail`` is a human sentence safe to show.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=title, description=detail, headers=headers)
        # ``code`` is taken: falcon.HTTPError.code is an optional numeric app code.
        self.problem_code = code
        self.errors = list(errors)
        self.header_map = dict(headers or {})


def validation_error(errors: Sequence[FieldError]) -> Problem:
    """Return a 422 ``validation_error`` whose detail summarises the first field error."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem(422, "validation_error", f"{first.field}: {first.message}{more}", errors=errors)


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
    errors: list[FieldError] = getattr(error, "errors", [])
    if errors:
        doc["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return doc


def serialize(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon error serializer: always problem+json, whatever the client accepts."""
    resp.data = orjson.dumps(to_dict(error, req))
    resp.content_type = PROBLEM_JSON


def _from_taskflow(ex: TaskFlowError) -> Problem:
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
    problem = _from_taskflow(ex)
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


def install(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    """Register the serializer and the exception → problem handlers on ``app``."""
    app.set_error_serializer(serialize)
    # Falcon picks the most specific registered class, so order does not matter.
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(TaskFlowError, _handle_taskflow)
