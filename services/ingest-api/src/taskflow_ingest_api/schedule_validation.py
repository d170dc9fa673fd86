"""Schedule requests of the ingest API: decode and check bodies and queries (no I/O).

``POST /api/v1/schedules`` takes a :class:`ScheduleBody`::

    {"name": str, "task": {"type": str, "payload": JSON, "priority": ..., "tags": {...},
     "max_attempts": 1..100 | null, "timeout_s": (0, 86400] | null},
     "cron": "*/5 * * * *", "timezone": "Europe/Berlin"   (or)   "every": "30s" | 30,
     "missed": "skip" | "catch_up", "catch_up_max": 1..1000,
     "overlap": "allow" | "skip" | "queue", "paused": bool}

``PATCH /api/v1/schedules/{name}`` takes a :class:`ScheduleChange`: the same members,
all optional (no ``name``); :func:`apply_change` merges it into the stored definition.

Everything raises :class:`~taskflow_common.http.Problem`: 400 ``invalid_json`` for a body
that is not JSON, 422 ``validation_error`` naming each field otherwise (an invalid or
never-firing cron, an unknown zone and an interval under 1 s name ``cron``,
``timezone`` and ``every``), 400 ``invalid_cursor`` and 404 ``not_found`` for a name no
schedule can have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from taskflow_common.cadence import Cadence, InvalidCadence
from taskflow_common.errors import InvalidCursor
from taskflow_common.http import FieldError, Problem, validation_error
from taskflow_common.spec import (
    ATTEMPTS_RULE,
    MAX_ATTEMPTS,
    MAX_TAGS,
    MAX_TIMEOUT_S,
    MIN_ATTEMPTS,
    PRIORITY_RULE,
    TIMEOUT_RULE,
    TYPE_PATTERN,
    TYPE_RULE,
    json_problems,
)
from taskflow_common.store.schedules import (
    MAX_LIST_LIMIT,
    NAME_PATTERN,
    ScheduleSpec,
    decode_cursor,
)
from taskflow_common.ticks import MAX_CATCH_UP, Policy
from taskflow_ingest_api.validation import (
    DEFAULT_LIST_LIMIT,
    TAGS_RULE,
    JsonInt,
    TagKey,
    TagValue,
    parse_limit,
)

NAME_RULE = "must be 1..128 characters of A-Z a-z 0-9 _ . : -"
CRON_CHARS = 256
ZONE_CHARS = 64
EVERY_RULE = "must be a duration such as 30s, 5m, 1h or 1d (or a number of seconds), at least 1s"
CATCH_UP_RULE = f"must be an integer from 1 to {MAX_CATCH_UP}"
LIST_PARAMS = ("paused", "limit", "cursor")
_RULES = {
    "name": NAME_RULE,
    "task.type": TYPE_RULE,
    "task.priority": PRIORITY_RULE,
    "task.max_attempts": ATTEMPTS_RULE,
    "task.timeout_s": TIMEOUT_RULE,
    "task.tags": TAGS_RULE,
    "cron": f"must be a cron expression (5 or 6 fields) of at most {CRON_CHARS} characters",
    "timezone": "must be an IANA time zone name such as Europe/Berlin",
    "every": EVERY_RULE,
    "missed": "must be one of: skip, catch_up",
    "catch_up_max": CATCH_UP_RULE,
    "overlap": "must be one of: allow, skip, queue",
    "paused": "must be true or false",
}

Every = Annotated[str, Field(min_length=1, max_length=32)] | float


class TemplateBody(BaseModel):
    """The task every tick submits: a task spec without timing or idempotency key."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: str = Field(pattern=TYPE_PATTERN.pattern)
    payload: JsonValue = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    max_attempts: JsonInt | None = Field(None, ge=MIN_ATTEMPTS, le=MAX_ATTEMPTS)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    tags: dict[TagKey, TagValue] | None = Field(None, max_length=MAX_TAGS)


class TemplateChange(TemplateBody):
    """A PATCH's ``task``: the members given replace the stored ones (``type`` optional)."""

    type: str | None = Field(None, pattern=TYPE_PATTERN.pattern)  # type: ignore[assignment]


class ScheduleChange(BaseModel):
    """A ``PATCH /api/v1/schedules/{name}`` body; absent (or null cadence) members are kept."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    task: TemplateChange | None = None
    cron: str | None = Field(None, min_length=1, max_length=CRON_CHARS)
    timezone: str | None = Field(None, min_length=1, max_length=ZONE_CHARS)
    every: Every | None = None
    missed: Literal["skip", "catch_up"] | None = None
    catch_up_max: JsonInt | None = Field(None, ge=1, le=MAX_CATCH_UP)
    overlap: Literal["allow", "skip", "queue"] | None = None
    paused: bool | None = None


class ScheduleBody(BaseModel):
    """A ``POST /api/v1/schedules`` body: a name, a task template, one cadence, policies."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN.pattern)
    task: TemplateBody
    cron: str | None = Field(None, min_length=1, max_length=CRON_CHARS)
    timezone: str | None = Field(None, min_length=1, max_length=ZONE_CHARS)
    every: Every | None = None
    missed: Literal["skip", "catch_up"] = "skip"
    catch_up_max: JsonInt = Field(10, ge=1, le=MAX_CATCH_UP)
    overlap: Literal["allow", "skip", "queue"] = "allow"
    paused: bool = False


_TASK_FIELDS = ", ".join(TemplateBody.model_fields)


def _path(loc: tuple[int | str, ...]) -> str:
    """``("task", "payload", 2)`` -> ``task.payload[2]`` (pydantic's union branches dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("[key]", "str", "float", "constrained-str") and "[" not in part:
            out += f".{part}" if out else part
    return out or "body"


def _problem(exc: ValidationError, allowed: str) -> Problem:
    fields: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False):
        found = _field_error(err, allowed)
        if found is None:
            return Problem(400, "invalid_json", "the request body is not valid JSON")
        if found not in fields:
            fields.append(found)
    return validation_error(fields)


def _field_error(err: ErrorDetails, allowed: str) -> FieldError | None:
    kind, name = err["type"], _path(err["loc"])
    if kind == "json_invalid":
        return None
    if name == "body" or (name == "task" and kind in ("model_type", "model_attributes_type")):
        return FieldError(name, "must be a JSON object")
    if kind == "missing":
        return FieldError(name, "is required")
    if kind == "extra_forbidden":
        in_task = name.startswith("task.")
        return FieldError(name, f"unknown field (allowed: {_TASK_FIELDS if in_task else allowed})")
    rule = _RULES.get(name) or _RULES.get(".".join(name.split(".")[:2]))
    return FieldError("task.tags" if name.startswith("task.tags") else name, rule or err["msg"])


def _decode(raw: bytes, model: type[BaseModel], allowed: str) -> Any:
    if not raw.strip():
        raise Problem(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _problem(exc, allowed) from None


def _cadence(
    cron: str | None, timezone: str | None, every: object, problems: list[FieldError]
) -> Cadence | None:
    try:
        return Cadence.parse(cron=cron, timezone=timezone, every=every)
    except InvalidCadence as exc:
        problems.append(FieldError(exc.field, str(exc)))
        return None


def _payload_problems(payload: Any, max_depth: int) -> list[FieldError]:
    return [FieldError(f, m) for f, m in json_problems(payload, "task.payload", max_depth)]


def parse_schedule(raw: bytes, *, max_depth: int) -> ScheduleSpec:
    """Decode and check a create body; return the :class:`ScheduleSpec` to store.

    Raises :class:`Problem` 400 ``invalid_json`` or 422 ``validation_error`` (shape,
    types and ranges first; then the cadence and a payload jsonb cannot hold, together).
    """
    body: ScheduleBody = _decode(raw, ScheduleBody, ", ".join(ScheduleBody.model_fields))
    problems = _payload_problems(body.task.payload, max_depth)
    cadence = _cadence(body.cron, body.timezone, body.every, problems)
    if problems or cadence is None:
        raise validation_error(problems)
    t = body.task
    return ScheduleSpec(
        name=body.name,
        task_type=t.type,
        cadence=cadence,
        payload=t.payload,
        priority=t.priority,
        tags=t.tags or None,
        max_attempts=t.max_attempts,
        timeout_s=t.timeout_s,
        policy=Policy(body.missed, body.catch_up_max, body.overlap),
        paused=body.paused,
    )


def parse_change(raw: bytes, *, max_depth: int) -> ScheduleChange:
    """Decode and check a PATCH body (shape and payload); :func:`apply_change` does the rest.

    Raises :class:`Problem` 400 ``invalid_json`` or 422 ``validation_error``.
    """
    change: ScheduleChange = _decode(raw, ScheduleChange, ", ".join(ScheduleChange.model_fields))
    if change.task is not None and "payload" in change.task.model_fields_set:
        problems = _payload_problems(change.task.payload, max_depth)
        if problems:
            raise validation_error(problems)
    return change


@dataclass(frozen=True, slots=True)
class Changed:
    """The merged definition, and whether its cadence changed (the schedule is re-timed)."""

    spec: ScheduleSpec
    retimed: bool


def apply_change(current: ScheduleSpec, change: ScheduleChange) -> Changed:
    """Merge ``change`` into ``current`` (the locked row's definition).

    Task members given replace the stored ones (``max_attempts``/``timeout_s``/``tags``
    null: back to the defaults); ``type``/``priority`` null keep theirs. A new ``every``
    replaces the cadence; a new ``cron`` too, read in the new ``timezone``, else in the
    stored one (a cron schedule's) or UTC; ``timezone`` alone re-reads the stored cron.
    Raises 422 ``validation_error`` for a cadence that does not parse (naming the field).
    """
    problems: list[FieldError] = []
    cadence: Cadence | None = current.cadence
    old = current.cadence
    if change.every is not None:
        cadence = _cadence(change.cron, change.timezone, change.every, problems)
    elif change.cron is not None:
        zone = change.timezone or (old.timezone if old.cron is not None else None)
        cadence = _cadence(change.cron, zone, None, problems)
    elif change.timezone is not None:
        if old.cron is None:
            problems.append(FieldError("timezone", "timezone applies to cron schedules only"))
        else:
            cadence = _cadence(old.cron, change.timezone, None, problems)
    if problems or cadence is None:
        raise validation_error(problems)
    spec = replace(
        current,
        cadence=cadence,
        policy=Policy(
            change.missed or current.policy.missed,
            change.catch_up_max or current.policy.catch_up_max,
            change.overlap or current.policy.overlap,
        ),
        paused=current.paused if change.paused is None else change.paused,
    )
    if change.task is not None:
        spec = _merge_task(spec, change.task)
    key = (cadence.cron, cadence.timezone, cadence.every_s)
    return Changed(spec, key != (old.cron, old.timezone, old.every_s))


def _merge_task(spec: ScheduleSpec, task: TemplateChange) -> ScheduleSpec:
    given = task.model_fields_set
    values: dict[str, Any] = {}
    if task.type is not None:
        values["task_type"] = task.type
    if "priority" in given and task.priority is not None:
        values["priority"] = task.priority
    for name in ("payload", "max_attempts", "timeout_s"):
        if name in given:
            values[name] = getattr(task, name)
    if "tags" in given:
        values["tags"] = task.tags or None
    return replace(spec, **values)


def check_name(name: str) -> str:
    """Return a path's schedule name; 404 ``not_found`` for one no schedule can have."""
    if not NAME_PATTERN.match(name):
        raise Problem(404, "not_found", f"schedule {name[:130]!r} not found")
    return name


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Validated ``GET /api/v1/schedules`` parameters (``paused`` None: all)."""

    paused: bool | None = None
    limit: int = DEFAULT_LIST_LIMIT
    cursor: str | None = None


def parse_list_query(params: Mapping[str, Any]) -> ListQuery:
    """Validate ``?paused=true|false&limit=1..200&cursor=...`` (Falcon's ``req.params``).

    Unknown or repeated parameters and bad values are 422 ``validation_error``; a
    cursor this API did not hand out is 400 ``invalid_cursor``.
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
    paused: bool | None = None
    if "paused" in values:
        if values["paused"] not in ("true", "false"):
            errors.append(FieldError("paused", "must be true or false"))
        paused = values["paused"] == "true"
    limit = parse_limit(values, errors, MAX_LIST_LIMIT)
    if errors:
        raise validation_error(errors)
    cursor = values.get("cursor")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except InvalidCursor as exc:
            raise Problem(400, "invalid_cursor", str(exc)) from None
    return ListQuery(paused, limit, cursor)
