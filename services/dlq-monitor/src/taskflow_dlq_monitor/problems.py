"""HTTP plumbing shared by the API's resources: problem+json errors, request ids, JSON.

Every 4xx/5xx leaves as ``application/problem+json`` (RFC 9457)::

    {"type": "urn:taskflow:problem:<code>", "title": str, "status": int,
     "detail": str, "code": str, "request_id": str, "errors"?: [{"field", "message"}]}

``code`` is a stable snake_case name clients may branch on. No stack trace and no
driver message ever reaches a client. ``X-Request-Id`` is accepted (1..128 characters
of ``[A-Za-z0-9._:-]``) or generated, echoed on every response (404 and 405 included)
and bound to every log line written while the request runs.

Nothing here is specific to the dlq-monitor; it is written so it can move into
``taskflow_common`` once the ingest API uses the same conventions.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import falcon
import falcon.asgi
import orjson

from taskflow_common import logs
from taskflow_common.errors import ConflictError, NotFoundError, UnavailableError

log = logs.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Stable codes for the errors Falcon raises by itself.
_FALCON_CODES: Mapping[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


class Problem(falcon.HTTPError):
    """An HTTP error with a stable problem ``code`` and optional per-field ``errors``.

    ``errors`` is a list of ``{"field": str, "message": str}``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            falcon.code_to_http_status(status),
            title=falcon.code_to_http_status(status)[4:],
            description=detail,
            headers=dict(headers) if headers else None,
        )
        self.problem_code = code  # HTTPError.code is Falcon's own (an int)
        self.errors = list(errors) if errors else None


def invalid_parameter(field: str, message: str) -> Problem:
    """A 400 ``invalid_parameter`` naming the query/path ``field``."""
    return Problem(
        400,
        "invalid_parameter",
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def parse_uuid(value: str, field: str = "id") -> uuid.UUID:
    """Parse a path segment as a UUID or raise a 400 ``invalid_id`` naming ``field``."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem(
            400,
            "invalid_id",
            f"{field} must be a UUID",
            errors=[{"field": field, "message": "not a UUID"}],
        ) from None


def send_json(resp: falcon.asgi.Response, body: Any, status: int = 200) -> None:
    """Write ``body`` as compact JSON (orjson) with ``status``."""
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(body)


def _problem_body(req: falcon.asgi.Request, error: falcon.HTTPError) -> dict[str, Any]:
    status = error.status_code
    code = getattr(error, "problem_code", None) or _FALCON_CODES.get(status, f"http_{status}")
    body: dict[str, Any] = {
        "type": f"urn:taskflow:problem:{code}",
        "title": error.title or falcon.code_to_http_status(status)[4:],
        "status": status,
        "detail": error.description or error.title or "",
        "code": code,
        "request_id": req.context.get("request_id"),
    }
    errors = getattr(error, "errors", None)
    if errors:
        body["errors"] = errors
    return body


def serialize_problem(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: falcon.HTTPError
) -> None:
    """Falcon error serializer: every HTTPError becomes problem+json."""
    resp.content_type = PROBLEM_JSON
    resp.data = orjson.dumps(_problem_body(req, error))


async def _not_found(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: NotFoundError, params: Any
) -> None:
    raise Problem(404, "not_found", str(ex))


async def _conflict(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ConflictError, params: Any
) -> None:
    raise Problem(409, ex.code, str(ex))


async def _unavailable(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: UnavailableError, params: Any
) -> None:
    log.warning("request_unavailable", error=str(ex), path=req.path)
    raise Problem(
        503, "unavailable", "a dependency is unavailable; retry later", headers={"Retry-After": "1"}
    )


async def _unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    log.error("request_failed", exc=True, path=req.path, method=req.method)
    raise Problem(500, "internal_error", "internal error; see the service log")


def install_error_handling(app: falcon.asgi.App[Any, Any]) -> None:
    """Map TaskFlow errors to problems and make every error body problem+json.

    :class:`NotFoundError` -> 404 ``not_found``; :class:`ConflictError` -> 409 with its
    ``code``; :class:`UnavailableError` -> 503 ``unavailable`` (``Retry-After: 1``);
    anything else -> 500 ``internal_error`` (logged with its traceback).
    """
    app.set_error_serializer(serialize_problem)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(NotFoundError, _not_found)
    app.add_error_handler(ConflictError, _conflict)
    app.add_error_handler(UnavailableError, _unavailable)


class RequestIdMiddleware:
    """Accept or generate ``X-Request-Id``, echo it, and bind it to log lines."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Pick the request id and bind it to the logging context."""
        given = req.get_header(REQUEST_ID_HEADER)
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        req.context.request_id = request_id
        req.context.log_token = logs.bind(request_id=request_id)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Echo the id on the response (errors included) and unbind it."""
        request_id = req.context.get("request_id")
        if request_id is None:  # process_request did not run (e.g. routing failed early)
            request_id = uuid.uuid4().hex
            req.context.request_id = request_id
        resp.set_header(REQUEST_ID_HEADER, request_id)
        token = req.context.get("log_token")
        if token is not None:
            req.context.log_token = None
            # ValueError: bound in another context (Falcon ran the hooks apart); nothing to undo.
            with contextlib.suppress(ValueError):
                logs.unbind(token)
