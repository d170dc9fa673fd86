"""Request validation: the submit body, list query parameters, ids and headers.

Everything here is pure (no I/O) and raises :class:`~taskflow_common.http.Problem`:
400 ``invalid_json`` for a body that is not JSON at all (or empty), 400 ``invalid_id`` /
``invalid_cursor`` for malformed path ids and cursors, and 422 ``validation_error``
listing each offending field for JSON that parses but is not an acceptable request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from taskflow_common.http import FieldError, Problem, validation_error
from taskflow_common.store.rows import TASK_STATUSES
from taskflow_common.store.tasks import (
    MAX_LIST_LIMIT,
    TYPE_PATTERN,
    InvalidCursor,
    TaskSpec,
    decode_cursor,
    json_problems,
)
from taskflow_common.subjects import PRIORITIES

TYPE_RULE = "must be 1..128 characters of A-Z a-z 0-9 _ . : -"
PRIORITY_RULE = "must be one of: " + ", ".join(PRIORITIES)
STATUS_RULE = "must be one of: " + ", ".join(TASK_STATUSES)
IDEMPOTENCY_KEY_RULE = "must be 1..255 printable ASCII characters"
DEFAULT_LIST_LIMIT = 50
LIST_PARAMS = ("status", "type", "priority", "limit", "cursor")

_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]{1,255}$")


class SubmitBody(BaseModel):
    """The ``POST /api/v1/tasks`` body, decoded strictly (no coercion, no extra keys).

    ``{"type": str, "payload": JSON (default {}), "priority": "high"|"normal"|"low"
    (default "normal"), "max_attempts": 1..100 (default WORKER_MAX_ATTEMPTS)}``.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: str = Field(pattern=TYPE_PATTERN.pattern)
    payload: JsonValue = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    max_attempts: int | None = Field(None, ge=1, le=100)


_FIELDS = ", ".join(SubmitBody.model_fields)


def _field_message(err: ErrorDetails) -> tuple[str, str]:
    loc = err["loc"]
    name = ".".join(str(part) for part in loc) if loc else "body"
    kind = err["type"]
    top = str(loc[0]) if loc else ""
    if kind == "model_type":
        return "body", "must be a JSON object"
    if kind == "missing":
        return name, "is required"
    if kind == "extra_forbidden":
        return name, f"unknown field (allowed: {_FIELDS})"
    if top == "type":
        return name, TYPE_RULE
    if top == "priority":
        return name, PRIORITY_RULE
    if top == "max_attempts":
        return name, "must be an integer from 1 to 100"
    return name, err["msg"]


def parse_submit(
    raw: bytes,
    *,
    idempotency_key: str | None,
    default_max_attempts: int,
    max_depth: int,
) -> TaskSpec:
    """Decode and check a submit body; return the normalised :class:`TaskSpec`.

    Raises :class:`Problem` 400 ``invalid_json`` (empty or malformed JSON) or 422
    ``validation_error`` (not an object; a field missing, mistyped or out of range;
    a payload jsonb cannot hold: ``\\u0000``, non-finite numbers, integers outside
    int64, nesting deeper than ``max_depth``).
    """
    if not raw.strip():
        raise Problem(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        # pydantic's JSON parser keeps big integers exact and turns 1e400 into inf,
        # so json_problems can name them instead of them failing later in Postgres.
        body = SubmitBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _problem_from(exc, raw, max_depth) from None
    problems = json_problems(body.payload, "payload", max_depth)
    if problems:
        raise validation_error([FieldError(f, m) for f, m in problems])
    return TaskSpec(
        type=body.type,
        payload=body.payload,
        priority=body.priority,
        max_attempts=body.max_attempts or default_max_attempts,
        idempotency_key=idempotency_key,
    )


def _problem_from(exc: ValidationError, raw: bytes, max_depth: int) -> Problem:
    errors = exc.errors(include_url=False, include_input=False)
    invalid = [e for e in errors if e["type"] == "json_invalid"]
    if invalid:
        message = invalid[0]["msg"].removeprefix("Invalid JSON: ")
        if "recursion limit" in message:
            # The parser's own nesting limit (~200) is above ours: still a 422.
            where = "payload" if raw.lstrip().startswith(b"{") else "body"
            return validation_error([FieldError(where, f"nested deeper than {max_depth} levels")])
        return Problem(400, "invalid_json", f"the request body is not valid JSON: {message}")
    return validation_error([FieldError(*_field_message(e)) for e in errors])


def check_content_type(value: str | None) -> None:
    """Accept ``application/json`` (optionally ``; charset=utf-8``); else raise 415."""
    media, _, params = (value or "").partition(";")
    if media.strip().lower() == "application/json":
        charset = ""
        for param in params.split(";"):
            name, _, val = param.partition("=")
            if name.strip().lower() == "charset":
                charset = val.strip().strip('"').lower()
        if charset in ("", "utf-8", "utf8"):
            return
    raise Problem(
        415,
        "unsupported_media_type",
        f"Content-Type must be application/json (UTF-8), not {value or 'missing'!r}"[:200],
    )


def parse_idempotency_key(value: str | None) -> str | None:
    """Check an ``Idempotency-Key`` header (absent → None); raise 422 if malformed."""
    if value is None:
        return None
    if not _PRINTABLE_ASCII.match(value):
        raise validation_error([FieldError("Idempotency-Key", IDEMPOTENCY_KEY_RULE)])
    return value


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Validated ``GET /api/v1/tasks`` parameters (None = no filter)."""

    status: str | None = None
    type: str | None = None
    priority: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    cursor: str | None = None


def parse_list_query(params: Mapping[str, Any]) -> ListQuery:
    """Validate the list query string (Falcon's ``req.params``).

    Each parameter may appear once. Unknown parameters, unknown filter values and a
    ``limit`` outside 1..200 are 422 ``validation_error`` naming the parameter; a
    cursor this API did not issue is 400 ``invalid_cursor``.
    """
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    for name, value in params.items():
        if name not in LIST_PARAMS:
            errors.append(
                FieldError(name, f"unknown parameter (allowed: {', '.join(LIST_PARAMS)})")
            )
        elif not isinstance(value, str):
            errors.append(FieldError(name, "give this parameter at most once"))
        else:
            values[name] = value
    status = values.get("status")
    if status is not None and status not in TASK_STATUSES:
        errors.append(FieldError("status", STATUS_RULE))
    task_type = values.get("type")
    if task_type is not None and not TYPE_PATTERN.match(task_type):
        errors.append(FieldError("type", TYPE_RULE))
    priority = values.get("priority")
    if priority is not None and priority not in PRIORITIES:
        errors.append(FieldError("priority", PRIORITY_RULE))
    limit = DEFAULT_LIST_LIMIT
    if "limit" in values:
        text = values["limit"]
        if (
            text.isascii()
            and text.isdigit()
            and len(text) <= 4
            and 1 <= int(text) <= MAX_LIST_LIMIT
        ):
            limit = int(text)
        else:
            errors.append(FieldError("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}"))
    if errors:
        raise validation_error(errors)
    cursor = values.get("cursor")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except InvalidCursor as exc:
            raise Problem(400, "invalid_cursor", str(exc)) from None
    return ListQuery(status, task_type, priority, limit, cursor)
