"""Errors the client raises, rooted at :class:`TaskFlowAPIError`.

Each carries the server's RFC 9457 problem document: ``status`` (HTTP status, None for
errors raised before or without a response), ``code`` (stable snake_case name such as
``not_found``, ``validation_error``, ``invalid_state``, ``unavailable``), ``detail`` (a
sentence safe to show) and ``errors`` (field errors of a 422, each ``field``/``message``).
Leaves also subclass the builtin that fits, so ``except LookupError`` or
``except ConnectionError`` work as expected:

- :class:`NotFound` (``LookupError``): 404 ``not_found``.
- :class:`Conflict`: 409, e.g. ``invalid_state``, ``idempotency_key_reused``.
- :class:`ValidationFailed` (``ValueError``): 400 and 422; also raised by ``enqueue``.
- :class:`Unavailable` (``ConnectionError``): 502/503/504, connection refused or reset
  (code ``unreachable``), no answer in time (code ``timeout``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class FieldError:
    """One rejected input: ``field`` is a path such as ``payload.a[2]`` or ``tasks[3].type``."""

    field: str
    message: str


class TaskFlowAPIError(Exception):
    """A TaskFlow API refused or could not answer a request.

    ``status``: HTTP status (int) or None when no response came; ``code``: the problem
    code; ``detail``: human text; ``errors``: field errors (may be empty); ``title``:
    the problem title; ``problem``: the whole problem document as received (``{}``
    without one), including extension members such as a batch's bad item ``index``.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        errors: Sequence[FieldError] = (),
        title: str | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.detail = detail
        self.status = status
        self.errors = list(errors)
        self.title = title or code
        self.problem: Mapping[str, Any] = dict(problem or {})
        super().__init__(detail)

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r})"


class NotFound(TaskFlowAPIError, LookupError):
    """The task or dead letter does not exist (404 ``not_found``)."""


class Conflict(TaskFlowAPIError):
    """The request conflicts with the stored state (409; ``code`` says which)."""


class ValidationFailed(TaskFlowAPIError, ValueError):
    """The request was rejected as malformed (400) or invalid (422); see ``errors``."""


class Unavailable(TaskFlowAPIError, ConnectionError):
    """The API (or its database) cannot serve the request now; safe to retry later.

    Also raised when the API cannot be reached at all (``code`` ``unreachable``) or
    does not answer in time (``timeout``). A timed-out submit may still have created
    the task: give it an ``idempotency_key`` and retrying is safe.
    """


_BY_STATUS: dict[int, type[TaskFlowAPIError]] = {
    400: ValidationFailed,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def from_response(resp: httpx.Response) -> TaskFlowAPIError:
    """Turn an error response (4xx/5xx) into the matching exception.

    The body should be problem+json; anything else (a proxy's HTML page, an empty
    body) still gives an error whose code is ``http_<status>`` and whose detail is the
    start of the body.
    """
    status = resp.status_code
    cls = _BY_STATUS.get(status, TaskFlowAPIError)
    doc: Any = None
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, Mapping):
        text = resp.text.strip()[:200] or resp.reason_phrase or "no detail"
        return cls(f"http_{status}", text, status=status)
    errors = [
        FieldError(str(e.get("field", "")), str(e.get("message", "")))
        for e in doc.get("errors") or ()
        if isinstance(e, Mapping)
    ]
    return cls(
        str(doc.get("code") or f"http_{status}"),
        str(doc.get("detail") or doc.get("title") or resp.reason_phrase),
        status=status,
        errors=errors,
        title=doc.get("title"),
        problem=doc,
    )


def from_transport(exc: httpx.TransportError, url: str) -> Unavailable:
    """Turn an httpx transport failure (refused, reset, timed out) into :class:`Unavailable`."""
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable("timeout", f"no answer from {url} in time ({type(exc).__name__})")
    return Unavailable("unreachable", f"cannot reach {url}: {type(exc).__name__}: {exc}")


def invalid_response(exc: Exception, url: str) -> TaskFlowAPIError:
    """The server answered 2xx with a body that does not have the documented shape."""
    return TaskFlowAPIError(
        "invalid_response", f"unexpected response from {url}: {type(exc).__name__}: {exc}"
    )
