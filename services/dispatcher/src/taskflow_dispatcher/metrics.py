"""The dispatcher's Prometheus metrics (:class:`DispatcherMetrics`).

Publishes and publish errors are counted by the outbox sweeper as they happen; the lag
and consumer gauges are sampled by :class:`~taskflow_dispatcher.sampler.Sampler`. The
registry, label caps and the ``/metrics`` server come from :mod:`taskflow_common.metrics`;
``docs/observability.md`` says what each series means.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from taskflow_common.loops import LoopErrors
from taskflow_common.metrics import LabelCap, priority_label


class DispatcherMetrics:
    """The dispatcher's metrics: publishes, dead letters, lag and consumer state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.types = LabelCap()
        self.loop_errors = LoopErrors(registry)
        """``taskflow_loop_errors_total{loop, error}``: passes of a duty's loop that raised."""
        self.published = Counter(
            "taskflow_tasks_published",
            "Task messages published to JetStream and PubAck'd (one per attempt), by priority.",
            ["priority"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "taskflow_publish_errors",
            "Task or dead-letter publishes without a PubAck (retried later).",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "taskflow_tasks_dead_lettered",
            "Dead letters of failed tasks published to the dead-letter stream.",
            ["type", "priority"],
            registry=registry,
        )
        self.dead_letters_rearmed = Counter(
            "taskflow_dead_letters_rearmed",
            "Published dead letters the dead-letter stream lost before the dlq-monitor "
            "recorded them (store wiped, stream recreated, aged out), published again.",
            registry=registry,
        )
        self.lag = Gauge(
            "taskflow_dispatcher_lag_seconds",
            "Age of the oldest task that is due but not yet published (0 when none; "
            "seconds, database clock; sampled).",
            registry=registry,
        )
        self.pending = Gauge(
            "taskflow_consumer_pending",
            "Messages in the stream not yet delivered to the priority's consumer (sampled).",
            ["priority"],
            registry=registry,
        )
        self.ack_pending = Gauge(
            "taskflow_consumer_ack_pending",
            "Messages delivered to workers and not yet acked, by priority (sampled).",
            ["priority"],
            registry=registry,
        )
        self.max_ack_pending = Gauge(
            "taskflow_consumer_max_ack_pending",
            "The consumer's max_ack_pending limit (WORKER_MAX_ACK_PENDING), by priority.",
            ["priority"],
            registry=registry,
        )
        self.redelivered = Gauge(
            "taskflow_consumer_redelivered",
            "Unacked messages that were delivered more than once, by priority (sampled).",
            ["priority"],
            registry=registry,
        )
        self.samples = Counter(
            "taskflow_dispatcher_samples",
            "Sampling rounds of lag and consumer state, by result (ok or error).",
            ["result"],
            registry=registry,
        )

    def published_batch(self, priorities: list[str], errors: int) -> None:
        """Count PubAck'd task publishes (one priority per message) and failed ones."""
        for p in priorities:
            self.published.labels(priority_label(p)).inc()
        if errors:
            self.publish_errors.inc(errors)

    def dead_letter_published(self, task_type: str, priority: str) -> None:
        """Count one dead letter on the bus."""
        self.dead_lettered.labels(self.types(task_type), priority_label(priority)).inc()

    def consumer_state(
        self, priority: str, pending: int, ack_pending: int, max_ack_pending: int, redelivered: int
    ) -> None:
        """Record one consumer's sampled state."""
        p = priority_label(priority)
        self.pending.labels(p).set(pending)
        self.ack_pending.labels(p).set(ack_pending)
        self.max_ack_pending.labels(p).set(max_ack_pending)
        self.redelivered.labels(p).set(redelivered)
