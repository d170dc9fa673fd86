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
    """

    batch_size: int = Field(500, alias="DISPATCHER_BATCH_SIZE", ge=1, le=10_000)
    poll_interval: Duration = Field(1.0, alias="DISPATCHER_POLL_INTERVAL", gt=0)
    reap_interval: Duration = Field(1.0, alias="DISPATCHER_REAP_INTERVAL", gt=0)
    stream_check_interval: Duration = Field(1.0, alias="DISPATCHER_STREAM_CHECK_INTERVAL", gt=0)
    redispatch_after: Duration = Field(900.0, alias="DISPATCHER_REDISPATCH_AFTER", gt=0)
    audit_interval: Duration = Field(5.0, alias="DISPATCHER_AUDIT_INTERVAL", gt=0)
    metrics_port: int = Field(9102, alias="DISPATCHER_METRICS_PORT", ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", alias="DISPATCHER_METRICS_HOST", min_length=1)
    metrics_interval: Duration = Field(5.0, alias="DISPATCHER_METRICS_INTERVAL", gt=0, le=300)
