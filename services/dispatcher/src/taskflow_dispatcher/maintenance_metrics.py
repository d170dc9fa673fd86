"""Metrics of the dispatcher's maintenance loops: the schedule loop and the pruner.

Registered on the dispatcher's registry next to its other metrics and served on its
``/metrics`` port. No label carries a schedule name or a task id (both unbounded):
``reason`` is ``missed`` or ``overlap``; ``table`` is ``tasks``, ``task_executions`` or
``dead_letters``; ``status`` a terminal task status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
"""Tick lag buckets (seconds): 5 ms to 1 h; the target is a task within 100 ms of its tick."""


class MaintenanceMetrics:
    """Ticks fired, skipped and late, tick lag; rows pruned, oldest terminal task age."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ticks_fired = Counter(
            "taskflow_schedule_ticks_fired",
            "Schedule ticks that created their task (caught-up ones included; run-now "
            "is the API's and not counted here).",
            registry=registry,
        )
        self.ticks_skipped = Counter(
            "taskflow_schedule_ticks_skipped",
            "Schedule ticks that made no task, by reason: missed (older than the grace "
            "under missed=skip, or beyond catch_up_max) or overlap (overlap=skip).",
            ["reason"],
            registry=registry,
        )
        self.ticks_late = Counter(
            "taskflow_schedule_ticks_late",
            "Ticks fired more than the grace after they were due (caught up, or waited "
            "under overlap=queue).",
            registry=registry,
        )
        self.ticks_replayed = Counter(
            "taskflow_schedule_ticks_replayed",
            "Ticks whose task existed already (ON CONFLICT on schedule and tick): a "
            "replayed tick that made no second task.",
            registry=registry,
        )
        self.tick_lag = Histogram(
            "taskflow_schedule_tick_lag_seconds",
            "From a tick's due time to the creation of its task (database clock).",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self.pruned = Counter(
            "taskflow_pruned_rows",
            "Rows deleted by retention, by table.",
            ["table"],
            registry=registry,
        )
        self.oldest_terminal = Gauge(
            "taskflow_oldest_terminal_task_age_seconds",
            "Age of the oldest task of each terminal status still stored (0 when none; "
            "sampled after each prune).",
            ["status"],
            registry=registry,
        )
        self.prune_seconds = Histogram(
            "taskflow_prune_batch_seconds",
            "Duration of one retention batch (one short transaction).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )

    def ticks(self, *, fired_lags: list[float], late: int, replayed: int) -> None:
        """Count one pass's fired ticks (their lags, seconds) and the late and replayed."""
        if fired_lags:
            self.ticks_fired.inc(len(fired_lags))
            for lag in fired_lags:
                self.tick_lag.observe(max(lag, 0.0))
        if late:
            self.ticks_late.inc(late)
        if replayed:
            self.ticks_replayed.inc(replayed)

    def skipped(self, *, missed: int, overlap: int) -> None:
        """Count ticks skipped by the missed-tick and the overlap policy."""
        if missed:
            self.ticks_skipped.labels("missed").inc(missed)
        if overlap:
            self.ticks_skipped.labels("overlap").inc(overlap)
