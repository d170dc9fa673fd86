"""Messages on the bus: frozen dataclasses and their JSON codec.

A task message is small and fixed-size: the task id, the attempt it is meant to start,
the dispatch sequence that fences stale copies, and the priority. The payload stays in
Postgres, so a task is never limited by the broker's message size (1 MiB by default).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson

from taskflow_common.errors import MalformedMessage
from taskflow_common.subjects import PRIORITIES, Priority

MAX_RAW_BYTES = 4096
"""How much of an undecodable message a dead letter keeps (bytes)."""


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """``{"task_id", "attempt", "dispatch", "priority"}`` on ``<prefix>.<priority>``.

    ``attempt`` is the run number this publish is meant to start (informational);
    ``dispatch`` is the task's ``dispatch_seq`` at publish time, and only a message
    carrying the current value may claim the task.
    """

    task_id: uuid.UUID
    attempt: int
    dispatch: int
    priority: Priority

    def encode(self) -> bytes:
        """Serialise to compact JSON bytes."""
        return orjson.dumps(
            {
                "task_id": str(self.task_id),
                "attempt": self.attempt,
                "dispatch": self.dispatch,
                "priority": self.priority,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> TaskMessage:
        """Parse bytes from the bus.

        Raises :class:`MalformedMessage` with a human reason for anything that is not a
        JSON object with a UUID ``task_id``, positive integer ``attempt``/``dispatch`` and
        a known ``priority``.
        """
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise MalformedMessage("not a JSON object")
        missing = [k for k in ("task_id", "attempt", "dispatch", "priority") if k not in obj]
        if missing:
            raise MalformedMessage(f"missing fields: {', '.join(missing)}")
        try:
            task_id = uuid.UUID(str(obj["task_id"]))
        except ValueError:
            raise MalformedMessage(f"task_id is not a UUID: {obj['task_id']!r}") from None
        for key in ("attempt", "dispatch"):
            value = obj[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MalformedMessage(f"{key} must be a positive integer, got {value!r}")
        if obj["priority"] not in PRIORITIES:
            raise MalformedMessage(f"unknown priority {obj['priority']!r}")
        return cls(task_id, obj["attempt"], obj["dispatch"], cast(Priority, obj["priority"]))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter on ``<prefix>.dlq``.

    For a task that failed for good, ``task_id``/``type``/``priority``/``attempts`` and
    ``error`` describe it. For a message that could not be decoded, ``task_id`` may be
    None and ``raw`` holds up to :data:`MAX_RAW_BYTES` of it (base64 on the wire).
    ``failed_at`` is an RFC 3339 UTC timestamp from the database clock when known.
    """

    reason: str
    task_id: uuid.UUID | None = None
    type: str | None = None
    priority: str | None = None
    attempts: int | None = None
    error: str | None = None
    failed_at: str | None = None
    trace_id: str | None = None
    subject: str | None = None
    raw: bytes | None = None

    def encode(self) -> bytes:
        """Serialise to JSON bytes."""
        body: dict[str, Any] = asdict(self)
        body["task_id"] = str(self.task_id) if self.task_id else None
        body["raw"] = base64.b64encode(self.raw).decode() if self.raw is not None else None
        return orjson.dumps(body)

    @classmethod
    def decode(cls, data: bytes) -> DeadLetter:
        """Parse a dead letter; raise :class:`MalformedMessage` when it is not one."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("reason"), str):
            raise MalformedMessage("dead letter without a reason")
        try:
            task_id = uuid.UUID(str(obj["task_id"])) if obj.get("task_id") else None
            raw = base64.b64decode(obj["raw"]) if obj.get("raw") else None
        except (ValueError, TypeError, AttributeError) as exc:
            raise MalformedMessage(f"bad dead letter field: {exc}") from None
        attempts = obj.get("attempts")
        return cls(
            reason=obj["reason"],
            task_id=task_id,
            type=_opt_str(obj.get("type")),
            priority=_opt_str(obj.get("priority")),
            attempts=attempts if isinstance(attempts, int) else None,
            error=_opt_str(obj.get("error")),
            failed_at=_opt_str(obj.get("failed_at")),
            trace_id=_opt_str(obj.get("trace_id")),
            subject=_opt_str(obj.get("subject")),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """``{"task_id", "attempt"}`` on the cancel control subject: stop that attempt's handler.

    ``attempt`` is the attempt the cancel closed; a worker running another attempt of
    the task (a late message, after a retry) ignores it. ``None`` (a request from an
    API older than the field) names whichever attempt runs; the worker's fenced
    statement then protects a newer one.
    """

    task_id: uuid.UUID
    attempt: int | None = None

    def encode(self) -> bytes:
        """Serialise to JSON bytes."""
        obj: dict[str, object] = {"task_id": str(self.task_id)}
        if self.attempt is not None:
            obj["attempt"] = self.attempt
        return orjson.dumps(obj)

    @classmethod
    def decode(cls, data: bytes) -> CancelRequest:
        """Parse; raise :class:`MalformedMessage` when it is not a cancel request."""
        try:
            obj = orjson.loads(data)
            attempt = obj.get("attempt")
            if attempt is not None and (type(attempt) is not int or attempt < 1):
                raise ValueError(f"attempt must be a positive integer, not {attempt!r}")
            return cls(uuid.UUID(str(obj["task_id"])), attempt)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"bad cancel request: {exc}") from None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
