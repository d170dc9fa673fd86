"""One exception tree for TaskFlow, rooted at :class:`TaskFlowError`.

Lower layers translate driver errors (asyncpg, nats-py) into these classes and keep
the original as ``__cause__``; service edges map them to exit codes or HTTP problems.
"""

from __future__ import annotations

from collections.abc import Sequence


class TaskFlowError(Exception):
    """Base of every error TaskFlow raises on purpose."""


class ConfigError(TaskFlowError, ValueError):
    """One or more environment variables are malformed; ``problems`` lists each one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class UnavailableError(TaskFlowError, ConnectionError):
    """A dependency (Postgres or NATS) cannot be reached in time; safe to retry later."""


class NotFoundError(TaskFlowError, LookupError):
    """The named task (or dead letter) does not exist."""


class ConflictError(TaskFlowError):
    """The request conflicts with stored state; ``code`` is the stable problem code."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        super().__init__(detail)


class IdempotencyKeyReused(ConflictError):
    """An ``Idempotency-Key`` was reused with a different request body."""

    def __init__(self, key: str) -> None:
        super().__init__(
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was already used with a different request body",
        )


class BatchKeyReused(IdempotencyKeyReused):
    """Item ``index`` of a batch reuses an ``Idempotency-Key`` with a different spec.

    The key was used before (by an earlier request or an earlier item of the same
    batch) for a task whose request differs; nothing of the batch is created.
    """

    def __init__(self, key: str, index: int) -> None:
        super().__init__(key)
        self.index = index


class InvalidCursor(TaskFlowError, ValueError):
    """A list cursor that TaskFlow did not produce (or that was damaged); HTTP 400."""


class InvalidStateError(ConflictError):
    """The task is not in a state that allows the requested transition."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_state", detail)


class StartupFailed(TaskFlowError):
    """A service could not start serving (its port is taken, its start-up failed); exit 1."""


class IncompatibleServerError(TaskFlowError, RuntimeError):
    """The NATS server is too old (JetStream features TaskFlow relies on need >= 2.10)."""


class MetricsPortError(TaskFlowError):
    """The metrics port cannot be bound (in use, or not allowed); exit code 1."""


class ConsumerConfigMismatch(TaskFlowError, RuntimeError):
    """An existing durable consumer's settings differ from config and cannot be updated."""


class ConsumerGone(TaskFlowError):
    """A pull found its consumer (or stream) missing; the caller should reconcile."""


class MalformedMessage(TaskFlowError, ValueError):
    """A message on a task subject cannot be decoded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
