"""The dlq-monitor's Prometheus metrics: the shared HTTP series plus dead letters.

Series: ``taskflow_http_requests_total`` and ``taskflow_http_request_duration_seconds``
(:class:`~taskflow_common.metrics.HttpMetrics`), ``taskflow_dead_letters_recorded_total``,
``taskflow_dead_letters_open``, ``taskflow_dead_letters_replayed_total`` and
``taskflow_dead_letters_discarded_total``; served at ``GET /metrics`` on its HTTP port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from taskflow_common.metrics import HttpMetrics, LabelCap, priority_label


class DlqMetrics(HttpMetrics):
    """The dlq-monitor's metrics: HTTP plus dead letters recorded, open, replayed, discarded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.types = LabelCap()
        self.recorded = Counter(
            "taskflow_dead_letters_recorded",
            "Dead letters newly recorded in Postgres by this process (redeliveries not "
            "counted), by type and priority (``none`` for undecodable ones).",
            ["type", "priority"],
            registry=registry,
        )
        self.open = Gauge(
            "taskflow_dead_letters_open",
            "Dead letters waiting for an operator (status open), by type; read from "
            "Postgres at scrape time.",
            ["type"],
            registry=registry,
        )
        self.replayed = Counter(
            "taskflow_dead_letters_replayed",
            "Tasks replayed from the dead-letter API or console.",
            registry=registry,
        )
        self.discarded = Counter(
            "taskflow_dead_letters_discarded",
            "Dead letters discarded from the dead-letter API or console.",
            registry=registry,
        )
        self._open_types: set[str] = set()

    def dead_letter_recorded(self, task_type: str | None, priority: str | None) -> None:
        """Count one newly recorded dead letter."""
        t = self.types(task_type) if task_type is not None else "none"
        p = priority_label(priority) if priority is not None else "none"
        self.recorded.labels(t, p).inc()

    def open_by_type(self, counts: dict[str | None, int]) -> None:
        """Set the open gauge from ``{type: count}``; types no longer open drop to 0."""
        now: dict[str, int] = {}
        for task_type, n in counts.items():
            label = self.types(task_type) if task_type is not None else "none"
            now[label] = now.get(label, 0) + n
        for gone in self._open_types - now.keys():
            self.open.labels(gone).set(0)
        for label, n in now.items():
            self.open.labels(label).set(n)
        self._open_types |= now.keys()
