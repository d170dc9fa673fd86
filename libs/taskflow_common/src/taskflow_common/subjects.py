"""Every JetStream stream, subject, consumer and header name TaskFlow uses.

Names derive from three settings so that test runs (and tenants) never collide:
``NATS_STREAM_NAME`` (task stream), ``NATS_CONSUMER_NAME`` (durable consumer prefix)
and ``NATS_SUBJECT_PREFIX`` (subject root, ``tasks`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taskflow_common.config import CommonSettings

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"


@dataclass(frozen=True, slots=True)
class Names:
    """Resolved names for one TaskFlow installation."""

    stream: str
    dlq_stream: str
    prefix: str
    consumer_prefix: str

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Names:
        """Derive every name from ``settings``."""
        return cls(
            stream=settings.nats_stream_name,
            dlq_stream=f"{settings.nats_stream_name}_DLQ",
            prefix=settings.nats_subject_prefix,
            consumer_prefix=settings.nats_consumer_name,
        )

    def task_subject(self, priority: Priority) -> str:
        """Subject a task of ``priority`` is published on, e.g. ``tasks.high``."""
        return f"{self.prefix}.{priority}"

    @property
    def task_subjects(self) -> list[str]:
        """The task stream's subjects, highest priority first."""
        return [self.task_subject(p) for p in PRIORITIES]

    @property
    def dlq_subject(self) -> str:
        """Dead-letter subject, e.g. ``tasks.dlq``; stored in its own stream."""
        return f"{self.prefix}.dlq"

    @property
    def wake_subject(self) -> str:
        """Core (non-JetStream) subject the dispatcher pings after publishing a batch."""
        return f"{self.prefix}.wake"

    @property
    def cancel_subject(self) -> str:
        """Core subject carrying cancel requests for running tasks."""
        return f"{self.prefix}.control.cancel"

    def consumer(self, priority: Priority) -> str:
        """Durable pull consumer name for one priority, e.g. ``taskflow-worker-high``."""
        return f"{self.consumer_prefix}-{priority}"

    @property
    def dlq_consumer(self) -> str:
        """Durable consumer of the dlq-monitor."""
        return f"{self.consumer_prefix}-dlq-monitor"

    @staticmethod
    def task_msg_id(task_id: str, dispatch_seq: int) -> str:
        """``Nats-Msg-Id`` of a task publish: one per dispatch, so retries are never deduped."""
        return f"{task_id}:{dispatch_seq}"

    @staticmethod
    def dlq_msg_id(task_id: str, attempt: int) -> str:
        """``Nats-Msg-Id`` of a dead letter: one per failure of a task."""
        return f"dlq:{task_id}:{attempt}"
