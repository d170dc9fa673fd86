"""The ingest API's Prometheus metrics: the shared HTTP series plus tasks submitted.

Series: ``taskflow_http_requests_total`` and ``taskflow_http_request_duration_seconds``
(:class:`~taskflow_common.metrics.HttpMetrics`), ``taskflow_tasks_submitted_total{type,
priority}`` and ``taskflow_loop_errors_total{loop, error}``; served at ``GET /metrics`` on
the API's port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from taskflow_common.loops import LoopErrors
from taskflow_common.metrics import HttpMetrics, LabelCap, priority_label


class ApiMetrics(HttpMetrics):
    """The ingest API's metrics: HTTP plus ``taskflow_tasks_submitted_total{type,priority}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.types = LabelCap()
        self.submitted = Counter(
            "taskflow_tasks_submitted",
            "Tasks created through the API (idempotent replays not counted).",
            ["type", "priority"],
            registry=registry,
        )
        self._submitted: dict[tuple[str, str], Counter] = {}
        self.loop_errors = LoopErrors(registry)
        """``taskflow_loop_errors_total{loop, error}``: the task-event listener
        (``task_events``) and the group-commit flusher (``group_submit``)."""

    def task_submitted(self, task_type: str, priority: str) -> None:
        """Count one newly created task (label children cached per type and priority)."""
        key = (task_type, priority)
        child = self._submitted.get(key)
        if child is None:
            child = self.submitted.labels(self.types(task_type), priority_label(priority))
            # Only bounded keys are cached: a type folded into "other" (past the cap)
            # or an unknown priority would let clients grow the cache without end.
            if self.types(task_type) == task_type and priority_label(priority) == priority:
                self._submitted[key] = child
        child.inc()
