"""The worker's Prometheus metrics (served on ``WORKER_METRICS_PORT``, default 9101).

Built on the shared helpers of :mod:`taskflow_common.metrics` (bounded labels, buckets,
the registry); see ``docs/observability.md`` for each series' meaning.
:func:`exported_names` lists the series names the worker exports, for the dashboard and
alert-rule checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from taskflow_common.loops import LoopErrors
from taskflow_common.metrics import (
    DURATION_BUCKETS_S,
    WAIT_BUCKETS_S,
    LabelCap,
    new_registry,
    priority_label,
    series_names,
)


class WorkerMetrics:
    """The worker's metrics; see ``docs/observability.md`` for each one's meaning.

    ``busy`` and ``slots`` are read at scrape time from ``busy_fn`` (slots in use) and
    ``slots`` (``WORKER_CONCURRENCY``).
    """

    def __init__(
        self, registry: CollectorRegistry, slots: int, busy_fn: Callable[[], float] | None = None
    ) -> None:
        self.registry = registry
        self.types = LabelCap()
        # Label children by (metric, label values): labels() takes a lock and validates
        # its arguments on every call, several times per task. Bounded: types are capped
        # by LabelCap, priorities and outcomes are fixed sets.
        self._children: dict[tuple[object, ...], Any] = {}
        labels = ["type", "priority"]
        self.started = Counter(
            "taskflow_attempts_started",
            "Attempts claimed and started by this worker (a task retried twice counts 3).",
            labels,
            registry=registry,
        )
        self.completed = Counter(
            "taskflow_tasks_completed",
            "Tasks that ended completed (their successful attempt recorded).",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            "taskflow_tasks_failed",
            "Tasks that failed for good (permanent error or attempts used up); each is "
            "then dead-lettered by the dispatcher.",
            labels,
            registry=registry,
        )
        self.retried = Counter(
            "taskflow_tasks_retried",
            "Failed attempts after which the task was scheduled to run again (backoff).",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "taskflow_attempt_duration_seconds",
            "Handler run time per attempt, by type and outcome (succeeded, failed, "
            "interrupted, cancelled, lost) (seconds).",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "taskflow_queue_wait_seconds",
            "Time from a task being due (submitted, or its retry due) to its attempt "
            "being claimed, by priority (seconds, database clock).",
            ["priority"],
            buckets=WAIT_BUCKETS_S,
            registry=registry,
        )
        self.busy = Gauge(
            "taskflow_worker_busy_slots",
            "Slots in use: deliveries being claimed, run or recorded.",
            registry=registry,
        )
        if busy_fn is not None:
            self.busy.set_function(busy_fn)
        self.slots = Gauge(
            "taskflow_worker_slots",
            "Slots of this worker (WORKER_CONCURRENCY).",
            registry=registry,
        )
        self.slots.set(slots)
        self.fetches = Counter(
            "taskflow_worker_fetches",
            "Fetch rounds over the priority consumers (empty ones included): stays flat "
            "when a worker is stuck or all its slots are busy.",
            registry=registry,
        )
        self.fetched = Counter(
            "taskflow_worker_messages_fetched",
            "Task messages fetched, by priority.",
            ["priority"],
            registry=registry,
        )
        self.stuck = Counter(
            "taskflow_worker_handlers_stuck",
            "Handlers that ignored their cancellation past the unwind time (stuck): each "
            "keeps its slot and lease until its coroutine ends.",
            ["type"],
            registry=registry,
        )
        self.loop_errors = LoopErrors(registry)
        """``taskflow_loop_errors_total{loop, error}``: passes of a loop that raised."""

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def fetch_round(self, priorities: list[str]) -> None:
        """Count one fetch round that returned messages of ``priorities`` (one per message)."""
        self.fetches.inc()
        for p in priorities:
            self._child(self.fetched, priority_label(p)).inc()

    def attempt_started(self, task_type: str, priority: str, queue_wait_s: float | None) -> None:
        """Count a claimed attempt; observe its queue wait (seconds) when known."""
        self._child(self.started, self.types(task_type), priority_label(priority)).inc()
        if queue_wait_s is not None:
            self._child(self.queue_wait, priority_label(priority)).observe(max(0.0, queue_wait_s))

    def attempt_finished(self, task_type: str, outcome: str, seconds: float) -> None:
        """Observe how long the handler ran (``seconds``) and how it ended."""
        self._child(self.duration, self.types(task_type), outcome).observe(seconds)

    def task_completed(self, task_type: str, priority: str) -> None:
        """Count a task completed by this worker."""
        self._child(self.completed, self.types(task_type), priority_label(priority)).inc()

    def handler_stuck(self, task_type: str) -> None:
        """Count a handler declared stuck (it ignored its cancellation)."""
        self._child(self.stuck, self.types(task_type)).inc()

    def attempt_failed(self, task_type: str, priority: str, task_status: str) -> None:
        """Count a recorded failure: ``retrying`` -> retried, ``failed`` -> failed for good."""
        labels = (self.types(task_type), priority_label(priority))
        if task_status == "retrying":
            self.retried.labels(*labels).inc()
        elif task_status == "failed":
            self.failed.labels(*labels).inc()


def exported_names() -> set[str]:
    """Every series name a worker exports (built from a fresh registry, shared with nothing)."""
    registry = new_registry()
    WorkerMetrics(registry, slots=1)
    return series_names(registry)
