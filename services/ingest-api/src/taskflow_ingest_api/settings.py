"""Settings of the ingest API (environment variable names are the field aliases)."""

from __future__ import annotations

from pydantic import Field

from taskflow_common.config import CommonSettings


class ApiSettings(CommonSettings):
    """``CommonSettings`` plus where to listen and how much of a request to accept.

    ``HTTP_HOST`` defaults to loopback (the Docker image sets ``0.0.0.0``);
    ``MAX_BODY_BYTES`` bounds a request body in bytes (default 1 MiB, larger → 413);
    ``MAX_JSON_DEPTH`` bounds how deeply a payload's arrays/objects may nest (→ 422);
    ``MAX_BATCH_BODY_BYTES`` bounds a ``POST /api/v1/tasks/batch`` body (default 16 MiB:
    1,000 specs of up to ~16 KiB each); ``SSE_HEARTBEAT_S`` is the idle time after
    which an event stream sends a keep-alive comment (seconds, default 15);
    ``LONG_POLL_MAX_S`` caps how long one ``?wait=`` holds (default 60, the most a
    client may ask for; lower it behind a proxy with a shorter idle timeout);
    ``SSE_MAX_S`` ends an event stream after that long (default 0: only when the task
    is finished); an EventSource client reconnects and gets the current state first.
    """

    http_host: str = Field("127.0.0.1", alias="HTTP_HOST", min_length=1)
    http_port: int = Field(8080, alias="HTTP_PORT", ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, alias="MAX_BODY_BYTES", ge=1024, le=64 * 1024 * 1024)
    max_json_depth: int = Field(64, alias="MAX_JSON_DEPTH", ge=1, le=128)
    max_batch_body_bytes: int = Field(
        16 * 1024 * 1024, alias="MAX_BATCH_BODY_BYTES", ge=1024, le=256 * 1024 * 1024
    )
    sse_heartbeat_s: float = Field(15.0, alias="SSE_HEARTBEAT_S", gt=0, le=300)
    long_poll_max_s: float = Field(60.0, alias="LONG_POLL_MAX_S", gt=0, le=60)
    sse_max_s: float = Field(0.0, alias="SSE_MAX_S", ge=0)
