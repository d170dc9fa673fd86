"""Worker settings (environment variables on top of the common ones)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator

from taskflow_common.config import CommonSettings, Duration

DEFAULT_WEIGHTS = "high=6,normal=3,low=1"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    """``WORKER_*`` variables. Durations in seconds once parsed."""

    concurrency: int = Field(10, alias="WORKER_CONCURRENCY", ge=1, le=10_000)
    poll_timeout: Duration = Field(1.0, alias="WORKER_POLL_TIMEOUT", gt=0)
    shutdown_grace: Duration = Field(30.0, alias="WORKER_SHUTDOWN_GRACE", ge=0)
    task_timeout: Duration = Field(300.0, alias="WORKER_TASK_TIMEOUT", gt=0)
    handlers: str = Field("taskflow_worker.builtin", alias="WORKER_HANDLERS", min_length=1)
    worker_id: str = Field(default_factory=_default_worker_id, alias="WORKER_ID", min_length=1)
    priority_weights: str = Field(DEFAULT_WEIGHTS, alias="WORKER_PRIORITY_WEIGHTS")
    metrics_port: int = Field(0, alias="WORKER_METRICS_PORT", ge=0, le=65535)

    @field_validator("priority_weights")
    @classmethod
    def _check_weights(cls, value: str) -> str:
        parse_weights(value)
        return value

    @property
    def weights(self) -> dict[str, int]:
        """``WORKER_PRIORITY_WEIGHTS`` parsed, e.g. ``{"high": 6, "normal": 3, "low": 1}``."""
        return parse_weights(self.priority_weights)

    @property
    def handler_modules(self) -> list[str]:
        """``WORKER_HANDLERS`` split on commas."""
        return [m.strip() for m in self.handlers.split(",") if m.strip()]


def parse_weights(value: str) -> dict[str, int]:
    """Parse ``high=6,normal=3,low=1``; raise ValueError naming the accepted form."""
    form = "expected high=N,normal=N,low=N with whole numbers >= 1"
    weights: dict[str, int] = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        name = name.strip()
        if name not in ("high", "normal", "low") or not number.strip().isdigit():
            raise ValueError(form)
        weights[name] = int(number)
    if set(weights) != {"high", "normal", "low"} or min(weights.values()) < 1:
        raise ValueError(form)
    return weights
