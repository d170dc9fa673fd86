"""Structured logging: one JSON object per line on stderr, with a stable event name.

Every line carries ``ts`` (RFC 3339 UTC), ``level``, ``service``, ``event`` (a fixed
snake_case vocabulary such as ``task_submitted``, ``attempt_started``,
``task_dead_lettered``) and whatever context is bound for the current request or task
(``request_id``, ``task_id``, ``attempt``, ``trace_id``, ``span_id``).

A line about one task uses an event of :data:`TASK_EVENTS` (the fixed vocabulary,
documented in ``docs/observability.md``) and carries ``task_id``, ``attempt`` (where
there is one) and the ``trace_id``/``span_id`` of the span it belongs to, so a log line
leads to its trace. Success lines on the task path are DEBUG (no per-task INFO line in
a worker or dispatcher); failures are WARNING.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import orjson
from opentelemetry import trace

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "taskflow_log_context", default=_EMPTY
)
_service = "taskflow"

TASK_EVENTS: Mapping[str, str] = MappingProxyType(
    {
        # event: "service, level: meaning (fields beyond task_id/attempt/trace_id/span_id)"
        "task_submitted": "ingest-api, INFO: a task was created (type, priority)",
        "task_submit_replayed": "ingest-api, INFO: an Idempotency-Key replay (no new task)",
        "task_cancelled": "ingest-api, INFO: cancelled by request (running_attempt: the "
        "attempt told to stop, or null)",
        "task_retried": "ingest-api, INFO: a failed or cancelled task was queued again with "
        "a fresh budget (dead_letters: open ones marked replayed)",
        "task_published": "dispatcher, DEBUG: an attempt's message was PubAck'd",
        "attempt_started": "worker, DEBUG: the attempt was claimed; its handler starts",
        "attempt_succeeded": "worker, DEBUG: the task completed on this attempt",
        "attempt_failed": "worker, WARNING: the handler failed (error, error_type, "
        "permanent, task_status retrying|failed, retry_at)",
        "attempt_abandoned": "worker or dispatcher, WARNING: the owner's lease expired "
        "(task_status)",
        "attempt_interrupted": "worker, INFO: given back at shutdown (not counted)",
        "attempt_cancelled": "worker, INFO: stopped by a cancel request",
        "attempt_lost": "worker, WARNING: the lease was lost to another worker",
        "attempt_left_to_lease": "worker, WARNING: a stuck handler still ran when the shutdown "
        "grace ended; not recorded, the reaper abandons it after its lease",
        "attempt_fenced": "worker, WARNING: a newer state won; this outcome was not stored",
        "claim_adopted": "worker, WARNING: an own claim that committed unseen was taken back",
        "delivery_skipped": "worker, DEBUG: a duplicate or stale delivery was acked unrun",
        "task_dead_lettered": "dispatcher, WARNING: the dead letter was published; and "
        "dlq-monitor, WARNING: it was recorded (type, error)",
        "message_dead_lettered": "worker, WARNING: an undecodable task message was "
        "dead-lettered (reason, subject)",
        "task_replayed": "dlq-monitor, INFO: a dead-lettered task was queued again",
        "tasks_replayed": "dlq-monitor, INFO: a bulk replay by filter (tasks, type, q)",
        "dead_letters_discarded": "dlq-monitor, INFO: dead letters were discarded (count)",
    }
)
"""The fixed vocabulary of per-task log events: name -> where, level and meaning."""


def _utc(ts: float) -> str:
    frac = int((ts % 1) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{frac:06d}Z"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line (orjson), merging bound context and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "service": _service,
            "event": record.getMessage(),
            "logger": record.name,
        }
        line.update(_context.get())
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line.setdefault("trace_id", f"{span.trace_id:032x}")
            line.setdefault("span_id", f"{span.span_id:016x}")
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(service: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines at ``level``, tagged with ``service``."""
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn and nats-py log through their own loggers; keep them quiet but JSON.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "nats", "asyncio"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class EventLogger:
    """A logger whose messages are event names with keyword fields.

    ``log.info("task_published", task_id=..., attempt=2)`` writes one JSON line.
    """

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def is_enabled(self, level: int) -> bool:
        """True when a line at ``level`` would be written (to skip building fields)."""
        return self._logger.isEnabledFor(level)

    def _log(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc, extra={"fields": fields}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        """Write ``event`` at DEBUG."""
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Write ``event`` at INFO."""
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Write ``event`` at WARNING."""
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, *, exc: bool = False, **fields: Any) -> None:
        """Write ``event`` at ERROR, with the current traceback when ``exc``."""
        self._log(logging.ERROR, event, exc, fields)


def get_logger(name: str) -> EventLogger:
    """Return the :class:`EventLogger` for module ``name``."""
    return EventLogger(name)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every line logged inside the block (this task/request only)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind ``fields`` for the rest of the current context; reset with :func:`unbind`."""
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo a :func:`bind`."""
    _context.reset(token)
