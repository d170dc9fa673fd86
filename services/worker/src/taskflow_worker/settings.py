"""Worker settings (environment variables on top of the common ones)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator

from taskflow_common.config import CommonSettings, Duration, parse_duration

DEFAULT_MAX_WAIT = "normal=45s,low=50s"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    """``WORKER_*`` variables. Durations in seconds once parsed.

    ``WORKER_METRICS_PORT`` (default 9101; 0 picks a free port, logged in
    ``service_ready``) and ``WORKER_METRICS_HOST`` (default 127.0.0.1) say where
    ``GET /metrics`` is served.
    """

    concurrency: int = Field(10, alias="WORKER_CONCURRENCY", ge=1, le=10_000)
    poll_timeout: Duration = Field(1.0, alias="WORKER_POLL_TIMEOUT", gt=0)
    shutdown_grace: Duration = Field(30.0, alias="WORKER_SHUTDOWN_GRACE", ge=0)
    task_timeout: Duration = Field(300.0, alias="WORKER_TASK_TIMEOUT", gt=0)
    handlers: str = Field("taskflow_worker.builtin", alias="WORKER_HANDLERS", min_length=1)
    worker_id: str = Field(default_factory=_default_worker_id, alias="WORKER_ID", min_length=1)
    priority_max_wait: str = Field(DEFAULT_MAX_WAIT, alias="WORKER_PRIORITY_MAX_WAIT")
    metrics_port: int = Field(9101, alias="WORKER_METRICS_PORT", ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", alias="WORKER_METRICS_HOST", min_length=1)

    @field_validator("priority_max_wait")
    @classmethod
    def _check_max_wait(cls, value: str) -> str:
        parse_max_wait(value)
        return value

    @property
    def max_wait(self) -> dict[str, float]:
        """``WORKER_PRIORITY_MAX_WAIT`` in seconds, e.g. ``{"normal": 45.0, "low": 50.0}``."""
        return parse_max_wait(self.priority_max_wait)

    @property
    def handler_modules(self) -> list[str]:
        """``WORKER_HANDLERS`` split on commas."""
        return [m.strip() for m in self.handlers.split(",") if m.strip()]


def parse_max_wait(value: str) -> dict[str, float]:
    """Parse ``normal=45s,low=50s``; raise ValueError naming the accepted form.

    How long a normal or low message may wait behind higher priorities before it is
    fetched first (see :mod:`taskflow_worker.fetcher`). Durations as elsewhere.
    """
    form = "expected normal=DURATION,low=DURATION, e.g. normal=45s,low=50s (each > 0)"
    bounds: dict[str, float] = {}
    for part in value.split(","):
        name, _, text = part.partition("=")
        name = name.strip()
        if name not in ("normal", "low") or name in bounds:
            raise ValueError(form)
        try:
            bounds[name] = parse_duration(text.strip())
        except ValueError:
            raise ValueError(form) from None
    if set(bounds) != {"normal", "low"} or min(bounds.values()) <= 0:
        raise ValueError(form)
    return bounds
