"""dlq-monitor settings: the common variables plus ``DLQ_*``."""

from __future__ import annotations

from pydantic import Field

from taskflow_common.config import CommonSettings, Duration


class DlqSettings(CommonSettings):
    """Variables of the dlq-monitor. Durations in seconds once parsed.

    ``DLQ_HTTP_PORT`` (default 8081; 0 picks a free port, logged in ``service_ready``)
    and ``DLQ_HTTP_HOST`` (default 127.0.0.1) say where the API listens.
    ``DLQ_POLL_INTERVAL`` is how long an idle consumer waits between pulls (dead letters
    are rare, so a cheap 200 ms poll is fine); ``DLQ_BATCH_SIZE`` caps one pull.
    """

    http_port: int = Field(8081, alias="DLQ_HTTP_PORT", ge=0, le=65535)
    http_host: str = Field("127.0.0.1", alias="DLQ_HTTP_HOST", min_length=1)
    poll_interval: Duration = Field(0.2, alias="DLQ_POLL_INTERVAL", gt=0, le=60)
    batch_size: int = Field(64, alias="DLQ_BATCH_SIZE", ge=1, le=1000)
