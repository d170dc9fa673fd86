"""Request validation: submit and batch bodies, list query parameters, headers.

Everything here is pure (no I/O) and raises :class:`~taskflow_common.http.Problem`:
400 ``invalid_json`` for a body that is not JSON at all (or empty), 400 ``invalid_id`` /
``invalid_cursor`` for malformed path ids and cursors, and 422 ``validation_error``
listing each offending field for JSON that parses but is not an acceptable request (a
batch's problem also carries ``index``, the first bad item).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from taskflow_common.errors import InvalidCursor
from taskflow_common.http import FieldError, Problem, validation_error
from taskflow_common.spec import (
    ATTEMPTS_RULE,
    BOTH_RULE,
    DELAY_RULE,
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENCY_KEY_RULE,
    MAX_ATTEMPTS,
    MAX_DELAY_MS,
    MAX_TAGS,
    MAX_TIMEOUT_S,
    MIN_ATTEMPTS,
    PRIORITY_RULE,
    TAG_KEY_CHARS,
    TAG_KEY_PATTERN,
    TAG_VALUE_CHARS,
    TAG_VALUE_PATTERN,
    TIMEOUT_RULE,
    TYPE_PATTERN,
    TYPE_RULE,
    TaskSpec,
    json_problems,
    tags_rule,
)
from taskflow_common.store import cursor as cursor_codec
from taskflow_common.store.rows import TASK_STATUSES
from taskflow_common.store.submissions import MAX_BATCH
from taskflow_common.store.tasks import MAX_LIST_LIMIT
from taskflow_common.subjects import PRIORITIES

STATUS_RULE = "must be one of: " + ", ".join(TASK_STATUSES)
RUN_AT_RULE = "must be an RFC 3339 date-time with an offset, e.g. 2026-11-29T15:03:28Z"
TAGS_RULE = tags_rule("an object")
TAG_QUERY_RULE = (
    f"must be key:value (key 1..{TAG_KEY_CHARS} characters, value at most "
    f"{TAG_VALUE_CHARS}, no \\u0000)"
)
DEFAULT_LIST_LIMIT = 50
LIST_PARAMS = ("status", "type", "priority", "schedule", "tag", "limit", "cursor")

RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
_RFC3339 = re.compile(RFC3339_PATTERN)


def _integral(value: Any) -> Any:
    """Read a JSON number with no fraction (``26.0``, ``1e2``) as the integer it is.

    JSON Schema's ``integer`` (which the OpenAPI document uses) admits such numbers;
    any other value is left for the strict ``int`` check to accept or refuse.
    """
    if type(value) is float and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer field as JSON Schema defines one: ``3`` and ``3.0``, never ``3.5`` or ``"3"``."""
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, Field(pattern=TAG_VALUE_PATTERN)]


class SubmitBody(BaseModel):
    """The ``POST /api/v1/tasks`` body, decoded strictly (no coercion, no extra keys).

    ``{"type": str, "payload": JSON (default {}), "priority": "high"|"normal"|"low"
    (default "normal"), "max_attempts": 1..100 (default WORKER_MAX_ATTEMPTS),
    "run_at": RFC 3339 (past = now) | "delay_ms": 0..31,536,000,000 (not both),
    "timeout_s": (0, 86400] seconds (default WORKER_TASK_TIMEOUT), "tags": {str: str}}``.
    ``null`` counts as absent for the optional fields; integers may be written with a
    zero fraction (``3.0``), as JSON Schema's ``integer`` allows.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: str = Field(pattern=TYPE_PATTERN.pattern)
    payload: JsonValue = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    max_attempts: JsonInt | None = Field(None, ge=MIN_ATTEMPTS, le=MAX_ATTEMPTS)
    run_at: str | None = Field(None, pattern=_RFC3339.pattern)
    delay_ms: JsonInt | None = Field(None, ge=0, le=MAX_DELAY_MS)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    tags: dict[TagKey, TagValue] | None = Field(None, max_length=MAX_TAGS)


class BatchItem(SubmitBody):
    """One spec of a batch: a submit body plus its own optional ``idempotency_key``."""

    idempotency_key: str | None = Field(None, pattern=IDEMPOTENCY_KEY_PATTERN.pattern)


class BatchBody(BaseModel):
    """The ``POST /api/v1/tasks/batch`` body: ``{"tasks": [BatchItem, ...]}`` (1..1000)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tasks: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


_FIELDS = ", ".join(SubmitBody.model_fields)
_ITEM_FIELDS = ", ".join(BatchItem.model_fields)
_RULES = {
    "type": TYPE_RULE,
    "priority": PRIORITY_RULE,
    "max_attempts": ATTEMPTS_RULE,
    "run_at": RUN_AT_RULE,
    "delay_ms": DELAY_RULE,
    "timeout_s": TIMEOUT_RULE,
    "tags": TAGS_RULE,
    "idempotency_key": IDEMPOTENCY_KEY_RULE,
}


def _path(loc: tuple[int | str, ...]) -> str:
    """``("tasks", 3, "tags", "k")`` -> ``tasks[3].tags.k``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out or "body"


def _field_message(err: ErrorDetails, batch: bool) -> tuple[str, str]:
    loc = err["loc"]
    kind = err["type"]
    # Inside a batch the spec's own fields start after ("tasks", index).
    in_item = len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int)
    spec_loc = loc[2:] if in_item else loc
    name = _path(loc)
    top = str(spec_loc[0]) if spec_loc else ""
    if kind in ("model_type", "model_attributes_type", "dict_type") and not spec_loc:
        return name, "must be a JSON object"
    if kind == "missing":
        return name, "is required"
    if kind == "extra_forbidden":
        allowed = _ITEM_FIELDS if in_item else "tasks" if batch else _FIELDS
        return name, f"unknown field (allowed: {allowed})"
    if loc == ("tasks",) or (loc and loc[0] == "tasks" and not in_item):
        return "tasks", f"must be an array of 1 to {MAX_BATCH} task specs"
    if top in _RULES:
        # tags errors name the tags object, not the (possibly odd) key.
        return (_path(loc[: len(loc) - len(spec_loc) + 1]) if top == "tags" else name), _RULES[top]
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
    problems = _spec_problems(body, "", max_depth)
    if problems:
        raise validation_error(problems)
    return _spec(body, idempotency_key, default_max_attempts)


def parse_batch(raw: bytes, *, default_max_attempts: int, max_depth: int) -> list[TaskSpec]:
    """Decode and check a batch body; return one :class:`TaskSpec` per item, in order.

    Raises :class:`Problem` 400 ``invalid_json`` or 422 ``validation_error`` whose
    ``errors`` name fields as ``tasks[<index>].<field>`` and whose ``index`` member is
    the lowest item index among them (absent when only the body itself is wrong, e.g.
    no ``tasks``). Shape and type errors of every item are reported together; payload
    and date checks run once those pass.
    """
    if not raw.strip():
        raise Problem(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        body = BatchBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _problem_from(exc, raw, max_depth, batch=True) from None
    problems: list[FieldError] = []
    first_bad: int | None = None
    for index, item in enumerate(body.tasks):
        found = _spec_problems(item, f"tasks[{index}].", max_depth)
        if found and first_bad is None:
            first_bad = index
        problems += found
    if problems:
        raise validation_error(problems, {"index": first_bad})
    return [_spec(item, item.idempotency_key, default_max_attempts) for item in body.tasks]


def _spec_problems(body: SubmitBody, prefix: str, max_depth: int) -> list[FieldError]:
    """What pydantic cannot check: a storable payload, a real date, one of run_at/delay_ms."""
    problems = [
        FieldError(f, m) for f, m in json_problems(body.payload, f"{prefix}payload", max_depth)
    ]
    if body.run_at is not None:
        try:
            # In UTC too: "0001-01-01T00:00:00+14:00" parses, but is before year 1 in UTC,
            # which neither Python nor the driver can represent (it failed as a 500).
            dt.datetime.fromisoformat(body.run_at.upper()).astimezone(dt.UTC)
        except (ValueError, OverflowError):
            problems.append(FieldError(f"{prefix}run_at", RUN_AT_RULE))
        if body.delay_ms is not None:
            problems.append(FieldError(f"{prefix}delay_ms", BOTH_RULE))
    return problems


def _spec(body: SubmitBody, idempotency_key: str | None, default_max_attempts: int) -> TaskSpec:
    return TaskSpec(
        type=body.type,
        payload=body.payload,
        priority=body.priority,
        max_attempts=body.max_attempts or default_max_attempts,
        idempotency_key=idempotency_key,
        timeout_s=body.timeout_s,
        tags=body.tags or None,
        run_at=dt.datetime.fromisoformat(body.run_at.upper()) if body.run_at else None,
        delay_s=body.delay_ms / 1000 if body.delay_ms is not None else None,
    )


def _problem_from(
    exc: ValidationError, raw: bytes, max_depth: int, *, batch: bool = False
) -> Problem:
    errors = exc.errors(include_url=False, include_input=False)
    invalid = [e for e in errors if e["type"] == "json_invalid"]
    if invalid:
        message = invalid[0]["msg"].removeprefix("Invalid JSON: ")
        if "recursion limit" in message:
            # The parser's own nesting limit (~200) is above ours: still a 422.
            where = "payload" if raw.lstrip().startswith(b"{") else "body"
            return validation_error([FieldError(where, f"nested deeper than {max_depth} levels")])
        return Problem(400, "invalid_json", f"the request body is not valid JSON: {message}")
    fields: list[FieldError] = []
    for err in errors:
        field = FieldError(*_field_message(err, batch))
        if field not in fields:  # several errors inside one tags object read as one
            fields.append(field)
    indexes = [
        loc[1]
        for e in errors
        if len(loc := e["loc"]) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int)
    ]
    return validation_error(fields, {"index": min(indexes)} if indexes else None)


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
    if not IDEMPOTENCY_KEY_PATTERN.match(value):
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
    tags: Mapping[str, str] | None = None
    matches_nothing: bool = False
    """Two ``tag`` filters give one key two values: no task can match."""
    schedule: str | None = None


def parse_list_query(params: Mapping[str, Any]) -> ListQuery:
    """Validate the list query string (Falcon's ``req.params``).

    Each parameter may appear once, except ``tag=key:value`` which may repeat (every
    tag must match; the key ends at the first ``:``; one key given twice with two
    values matches nothing). Unknown parameters and filter values (``schedule``: a
    name), a bad tag and a ``limit`` outside 1..200 are 422 ``validation_error``
    naming it; a cursor this API did not issue is 400 ``invalid_cursor``.
    """
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    tags: dict[str, str] = {}
    conflicting = False
    for name, value in params.items():
        if name not in LIST_PARAMS:
            errors.append(
                FieldError(name, f"unknown parameter (allowed: {', '.join(LIST_PARAMS)})")
            )
        elif name == "tag":
            for text in [value] if isinstance(value, str) else value:
                key, sep, tag_value = text.partition(":")
                if (
                    not sep
                    or not 1 <= len(key) <= TAG_KEY_CHARS
                    or len(tag_value) > TAG_VALUE_CHARS
                    or "\x00" in text
                ):
                    errors.append(FieldError("tag", TAG_QUERY_RULE))
                elif tags.setdefault(key, tag_value) != tag_value:
                    conflicting = True
        elif not isinstance(value, str):
            errors.append(FieldError(name, "give this parameter at most once"))
        else:
            values[name] = value
    status = values.get("status")
    if status is not None and status not in TASK_STATUSES:
        errors.append(FieldError("status", STATUS_RULE))
    task_type, schedule = values.get("type"), values.get("schedule")
    for name, text in (("type", task_type), ("schedule", schedule)):  # the same pattern
        if text is not None and not TYPE_PATTERN.match(text):
            errors.append(FieldError(name, TYPE_RULE))
    priority = values.get("priority")
    if priority is not None and priority not in PRIORITIES:
        errors.append(FieldError("priority", PRIORITY_RULE))
    limit = parse_limit(values, errors, MAX_LIST_LIMIT)
    if errors:
        raise validation_error(errors)
    cursor_text = values.get("cursor")
    if cursor_text is not None:
        try:
            cursor_codec.decode(cursor_text)
        except InvalidCursor as exc:
            raise Problem(400, "invalid_cursor", str(exc)) from None
    return ListQuery(
        status, task_type, priority, limit, cursor_text, tags or None, conflicting, schedule
    )


def parse_limit(values: Mapping[str, str], errors: list[FieldError], maximum: int) -> int:
    """Return the ``limit`` query parameter: 1..``maximum``, :data:`DEFAULT_LIST_LIMIT` if absent.

    A malformed value appends a :class:`FieldError` to ``errors`` and returns the default,
    so one 422 names every bad parameter.
    """
    text = values.get("limit")
    if text is None:
        return DEFAULT_LIST_LIMIT
    if re.fullmatch(r"[0-9]{1,4}", text) and 1 <= int(text) <= maximum:
        return int(text)
    errors.append(FieldError("limit", f"must be an integer from 1 to {maximum}"))
    return DEFAULT_LIST_LIMIT
