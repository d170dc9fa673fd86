"""What the TaskFlow APIs return, as frozen dataclasses parsed from their JSON.

Timestamps arrive as RFC 3339 UTC strings (``2026-11-29T15:03:28.123456Z``) and become
aware :class:`datetime.datetime` objects; ids become :class:`uuid.UUID`. Every object
keeps the JSON it was parsed from in ``raw`` (not compared, not shown in ``repr``), so
fields a newer server adds are not lost and ``--json`` output is the server's own.

Parsing raises ``ValueError`` (or ``KeyError``/``TypeError``) for JSON that does not have
the documented shape; the clients turn that into
:class:`~taskflow_client.errors.TaskFlowAPIError` with code ``invalid_response``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
TaskStatus = Literal["queued", "processing", "retrying", "completed", "failed", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = (
    "queued",
    "processing",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
"""A task in one of these states changes only through cancel/retry/replay."""


def parse_time(value: Any) -> dt.datetime | None:
    """Parse an RFC 3339 timestamp into an aware datetime; None stays None.

    Raises ``ValueError`` for anything else, including a time without a UTC offset.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}")
    parsed = dt.datetime.fromisoformat(value)  # 3.11+: accepts the "Z" suffix
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {value!r}")
    return parsed


def _time(doc: Mapping[str, Any], key: str) -> dt.datetime:
    value = parse_time(doc[key])
    if value is None:
        raise ValueError(f"{key} must not be null")
    return value


def _uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError(f"expected a UUID string, got {value!r}")
    return uuid.UUID(value)


def _opt_uuid(value: Any) -> uuid.UUID | None:
    return None if value is None else _uuid(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Task:
    """One task as the ingest API shows it (``GET /api/v1/tasks/{id}``).

    ``attempts`` counts started attempts, ``failed_attempts`` those that failed;
    ``version`` grows with every state change. ``result`` is the handler's return value
    (JSON) once ``completed``; ``last_error`` the latest failure text. ``run_at`` is
    when the task is (or was) due; ``timeout_s`` its per-attempt limit in seconds
    (None: the worker's default); ``tags`` a string map; ``schedule`` and
    ``scheduled_for`` the schedule and tick that made it (None: submitted).
    """

    id: uuid.UUID
    type: str
    payload: Any
    priority: str
    status: str
    attempts: int
    max_attempts: int
    version: int
    last_error: str | None
    result: Any
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    failed_attempts: int = 0
    run_at: dt.datetime | None = None
    timeout_s: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    schedule: str | None = None
    scheduled_for: dt.datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """True once ``completed``, ``failed`` or ``cancelled``."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Self:
        """Build a Task from its API JSON object; raise ``ValueError`` if malformed."""
        tags = doc.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise ValueError(f"tags must be an object, got {tags!r}")
        return cls(
            id=_uuid(doc["id"]),
            type=str(doc["type"]),
            payload=doc.get("payload"),
            priority=str(doc["priority"]),
            status=str(doc["status"]),
            attempts=int(doc["attempts"]),
            max_attempts=int(doc["max_attempts"]),
            version=int(doc["version"]),
            last_error=doc.get("last_error"),
            result=doc.get("result"),
            created_at=_time(doc, "created_at"),
            updated_at=_time(doc, "updated_at"),
            started_at=parse_time(doc.get("started_at")),
            finished_at=parse_time(doc.get("finished_at")),
            failed_attempts=int(doc.get("failed_attempts") or 0),
            run_at=parse_time(doc.get("run_at")),
            timeout_s=_opt_float(doc.get("timeout_s")),
            tags={str(k): str(v) for k, v in tags.items()},
            schedule=doc.get("schedule"),
            scheduled_for=parse_time(doc.get("scheduled_for")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as the ingest API shows it (``GET /api/v1/schedules/{name}``).

    The task template (``task_type``, ``payload``, ``priority``, ``tags``,
    ``max_attempts`` and ``timeout_s``, None: the server's defaults when a tick fires);
    the cadence, ``cron`` read in ``timezone`` or ``every_s`` seconds; the policies
    (``missed``: ``skip``/``catch_up`` up to ``catch_up_max`` ticks; ``overlap``:
    ``allow``/``skip``/``queue``); ``next_fire_at``, and the last run: its tick
    ``last_fire_at``, task ``last_task_id`` and that task's ``last_run_status``.
    """

    name: str
    task_type: str
    payload: Any
    priority: str
    tags: Mapping[str, str]
    max_attempts: int | None
    timeout_s: float | None
    cron: str | None
    timezone: str | None
    every_s: float | None
    missed: str
    catch_up_max: int
    overlap: str
    paused: bool
    next_fire_at: dt.datetime
    last_fire_at: dt.datetime | None
    last_task_id: uuid.UUID | None
    last_run_status: str | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Self:
        """Build a Schedule from its API JSON object; raise ``ValueError`` if malformed."""
        task = doc["task"]
        tags = task.get("tags") or {}
        max_attempts = task.get("max_attempts")
        return cls(
            name=str(doc["name"]),
            task_type=str(task["type"]),
            payload=task.get("payload"),
            priority=str(task["priority"]),
            tags={str(k): str(v) for k, v in tags.items()},
            max_attempts=None if max_attempts is None else int(max_attempts),
            timeout_s=_opt_float(task.get("timeout_s")),
            cron=doc.get("cron"),
            timezone=doc.get("timezone"),
            every_s=_opt_float(doc.get("every_s")),
            missed=str(doc["missed"]),
            catch_up_max=int(doc["catch_up_max"]),
            overlap=str(doc["overlap"]),
            paused=bool(doc["paused"]),
            next_fire_at=_time(doc, "next_fire_at"),
            last_fire_at=parse_time(doc.get("last_fire_at")),
            last_task_id=_opt_uuid(doc.get("last_task_id")),
            last_run_status=doc.get("last_run_status"),
            version=int(doc["version"]),
            created_at=_time(doc, "created_at"),
            updated_at=_time(doc, "updated_at"),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class Execution:
    """One attempt of a task (``GET /api/v1/tasks/{id}/executions``).

    ``status`` is ``started``, ``succeeded``, ``failed``, ``abandoned``, ``interrupted``
    or ``cancelled``; ``duration_ms`` is None while it runs.
    """

    id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    status: str
    worker_id: str | None
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_ms: float | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Self:
        """Build an Execution from its API JSON object; raise ``ValueError`` if malformed."""
        return cls(
            id=_uuid(doc["id"]),
            task_id=_uuid(doc["task_id"]),
            attempt=int(doc["attempt"]),
            status=str(doc["status"]),
            worker_id=doc.get("worker_id"),
            error=doc.get("error"),
            started_at=_time(doc, "started_at"),
            finished_at=parse_time(doc.get("finished_at")),
            duration_ms=_opt_float(doc.get("duration_ms")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered delivery as the dlq-monitor lists it (``GET /api/v1/dlq``).

    ``task_id`` is None for a message that named no task. ``status`` is ``open``,
    ``replayed`` or ``discarded``; ``raw_bytes`` the size of the kept message (bytes).
    """

    id: uuid.UUID
    task_id: uuid.UUID | None
    type: str | None
    priority: str | None
    attempts: int | None
    error: str | None
    reason: str | None
    subject: str | None
    trace_id: str | None
    status: str
    failed_at: dt.datetime | None
    recorded_at: dt.datetime | None
    resolved_at: dt.datetime | None
    raw_bytes: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Self:
        """Build a DeadLetter from its API JSON object; raise ``ValueError`` if malformed."""
        attempts = doc.get("attempts")
        raw_bytes = doc.get("raw_bytes")
        return cls(
            id=_uuid(doc["id"]),
            task_id=_opt_uuid(doc.get("task_id")),
            type=doc.get("type"),
            priority=doc.get("priority"),
            attempts=None if attempts is None else int(attempts),
            error=doc.get("error"),
            reason=doc.get("reason"),
            subject=doc.get("subject"),
            trace_id=doc.get("trace_id"),
            status=str(doc["status"]),
            failed_at=parse_time(doc.get("failed_at")),
            recorded_at=parse_time(doc.get("recorded_at")),
            resolved_at=parse_time(doc.get("resolved_at")),
            raw_bytes=None if raw_bytes is None else int(raw_bytes),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class NewTask:
    """One task to create, for :meth:`~taskflow_client.async_client.AsyncClient.submit_batch`.

    ``payload`` is any JSON value; ``max_attempts`` None means the server's default
    (``WORKER_MAX_ATTEMPTS``); ``run_at`` (aware datetime) or ``delay_ms`` (ms) delays
    the first run; ``timeout_s`` (s) bounds each attempt; ``tags`` is a string map;
    ``idempotency_key`` (1..255 printable ASCII) makes a resubmission return the task
    created the first time instead of a new one.
    """

    type: str
    payload: Any = None
    priority: Priority = "normal"
    max_attempts: int | None = None
    run_at: dt.datetime | None = None
    delay_ms: int | None = None
    timeout_s: float | None = None
    tags: Mapping[str, str] | None = None
    idempotency_key: str | None = None

    def body(self, *, with_key: bool) -> dict[str, Any]:
        """Return the JSON request body (unset options left out, so server defaults apply).

        ``with_key`` puts ``idempotency_key`` into the body (the batch form); a single
        submit sends it as the ``Idempotency-Key`` header instead. Raises ``ValueError``
        for a naive ``run_at`` (it would be ambiguous).
        """
        doc: dict[str, Any] = {"type": self.type, "priority": self.priority}
        if self.payload is not None:
            doc["payload"] = self.payload
        if self.max_attempts is not None:
            doc["max_attempts"] = self.max_attempts
        if self.run_at is not None:
            if self.run_at.tzinfo is None:
                raise ValueError("run_at must be an aware datetime (with a UTC offset)")
            doc["run_at"] = self.run_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if self.delay_ms is not None:
            doc["delay_ms"] = self.delay_ms
        if self.timeout_s is not None:
            doc["timeout_s"] = self.timeout_s
        if self.tags:
            doc["tags"] = dict(self.tags)
        if with_key and self.idempotency_key is not None:
            doc["idempotency_key"] = self.idempotency_key
        return doc
