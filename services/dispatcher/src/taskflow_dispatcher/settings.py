"""Dispatcher settings (environment variables on top of the common ones)."""

from __future__ import annotations

from pydantic import Field

from taskflow_common.config import CommonSettings, Duration


class DispatcherSettings(CommonSettings):
    """``DISPATCHER_*`` variables. Durations in seconds once parsed.

    ``GET /metrics`` is served on ``DISPATCHER_METRICS_HOST:DISPATCHER_METRICS_PORT``
    (default 127.0.0.1:9102; port 0 picks a free one, logged in ``service_ready``);
    ``DISPATCHER_METRICS_INTERVAL`` (default 5s) is how often the lag and consumer gauges
    are sampled. ``DISPATCHER_AUDIT_INTERVAL`` (default 5s) is how often the tasks
    waiting on the bus are checked against the stream (re-published when their message is
    gone); ``DISPATCHER_REDISPATCH_AFTER`` (default 15m) re-publishes a waiting task whose
    message cannot be checked (no stream sequence recorded) once it waited that long.
    ``DISPATCHER_DEAD_LETTER_CHECK_INTERVAL`` (default 10s) is how often published dead
    letters that the dlq-monitor has not recorded yet are looked for on the dead-letter
    stream (and published again when it lost them).

    Schedules and retention (issue 15, docs/schedules.md): ``SCHEDULE_MISFIRE_GRACE``
    (default 5s) is the age up to which a tick is on time; ``TASK_RETENTION`` (14d; 0 keeps
    forever) how long terminal tasks are kept, overridden per status by
    ``TASK_RETENTION_COMPLETED`` / ``_FAILED`` / ``_CANCELLED``; ``DLQ_RETENTION`` (30d; 0
    forever) how long resolved dead letters are kept; ``DISPATCHER_PRUNE_INTERVAL`` (1m)
    and ``DISPATCHER_PRUNE_BATCH`` (500 rows) pace the pruner.
    """

    batch_size: int = Field(500, alias="DISPATCHER_BATCH_SIZE", ge=1, le=10_000)
    poll_interval: Duration = Field(1.0, alias="DISPATCHER_POLL_INTERVAL", gt=0)
    reap_interval: Duration = Field(1.0, alias="DISPATCHER_REAP_INTERVAL", gt=0)
    stream_check_interval: Duration = Field(1.0, alias="DISPATCHER_STREAM_CHECK_INTERVAL", gt=0)
    dead_letter_check_interval: Duration = Field(
        10.0, alias="DISPATCHER_DEAD_LETTER_CHECK_INTERVAL", gt=0, le=3600
    )
    redispatch_after: Duration = Field(900.0, alias="DISPATCHER_REDISPATCH_AFTER", gt=0)
    audit_interval: Duration = Field(5.0, alias="DISPATCHER_AUDIT_INTERVAL", gt=0)
    metrics_port: int = Field(9102, alias="DISPATCHER_METRICS_PORT", ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", alias="DISPATCHER_METRICS_HOST", min_length=1)
    metrics_interval: Duration = Field(5.0, alias="DISPATCHER_METRICS_INTERVAL", gt=0, le=300)
    schedule_grace: Duration = Field(5.0, alias="SCHEDULE_MISFIRE_GRACE", ge=0, le=86400)
    task_retention: Duration = Field(14 * 86400.0, alias="TASK_RETENTION", ge=0)
    task_retention_completed: Duration | None = Field(None, alias="TASK_RETENTION_COMPLETED")
    task_retention_failed: Duration | None = Field(None, alias="TASK_RETENTION_FAILED")
    task_retention_cancelled: Duration | None = Field(None, alias="TASK_RETENTION_CANCELLED")
    dlq_retention: Duration = Field(30 * 86400.0, alias="DLQ_RETENTION", ge=0)
    prune_interval: Duration = Field(60.0, alias="DISPATCHER_PRUNE_INTERVAL", gt=0)
    prune_batch: int = Field(500, alias="DISPATCHER_PRUNE_BATCH", ge=1, le=10_000)

    def task_retention_s(self) -> dict[str, float]:
        """Seconds each terminal status is kept (0 = forever): the override or TASK_RETENTION."""
        overrides = {
            "completed": self.task_retention_completed,
            "failed": self.task_retention_failed,
            "cancelled": self.task_retention_cancelled,
        }
        return {s: self.task_retention if v is None else v for s, v in overrides.items()}
