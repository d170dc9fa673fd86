"""Settings for every TaskFlow service, read once from the environment.

Each service declares a frozen settings model (a subclass of :class:`CommonSettings`)
whose field aliases are the environment variable names. :func:`load` validates the
whole mapping at once and raises :class:`~taskflow_common.errors.ConfigError` naming
every malformed variable and the accepted form; services turn that into exit code 2.
Nothing else in TaskFlow reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from taskflow_common.errors import ConfigError

DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
"""What :func:`parse_duration` reads in a string (Python's ``re``: ``\\d`` is any digit)."""
_DURATION = re.compile(DURATION_PATTERN)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_FORM = "a duration such as 500ms, 2s, 1m, 1h or 30d (a bare number is seconds)"


def parse_duration(value: object) -> float:
    """Parse ``500ms`` / ``2s`` / ``1m`` / ``1h`` / ``30d`` / ``1.5`` into seconds.

    Returns a float number of seconds (>= 0). Raises ``ValueError`` naming the
    accepted form for anything else (negative numbers, unknown units, booleans).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORM}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected {DURATION_FORM}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError(f"expected {DURATION_FORM}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, given in the environment as ``500ms``, ``2s``, ``1m``..."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for printing settings)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class CommonSettings(BaseModel):
    """Variables every service reads. Aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/taskflow", alias="DATABASE_URL", min_length=1
    )
    nats_url: str = Field("nats://127.0.0.1:4222", alias="NATS_URL", min_length=1)
    nats_stream_name: str = Field(
        "TASKFLOW", alias="NATS_STREAM_NAME", pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )
    nats_consumer_name: str = Field(
        "taskflow-worker", alias="NATS_CONSUMER_NAME", pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )
    nats_subject_prefix: str = Field(
        "tasks", alias="NATS_SUBJECT_PREFIX", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )
    dlq_max_age: Duration = Field(30 * 86400.0, alias="DLQ_MAX_AGE", gt=0)
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = Field("INFO", alias="LOG_LEVEL")
    db_pool_min: int = Field(1, alias="DB_POOL_MIN", ge=0, le=100)
    db_pool_max: int = Field(10, alias="DB_POOL_MAX", ge=1, le=200)
    db_acquire_timeout: Duration = Field(2.0, alias="DB_ACQUIRE_TIMEOUT", gt=0)
    db_statement_timeout: Duration = Field(5.0, alias="DB_STATEMENT_TIMEOUT", gt=0)
    worker_max_attempts: int = Field(3, alias="WORKER_MAX_ATTEMPTS", ge=1, le=100)
    worker_ack_wait: Duration = Field(30.0, alias="WORKER_ACK_WAIT", ge=1)
    worker_max_deliver: int = Field(20, alias="WORKER_MAX_DELIVER", ge=2)
    worker_max_ack_pending: int = Field(1000, alias="WORKER_MAX_ACK_PENDING", ge=1)
    worker_backoff_base: Duration = Field(1.0, alias="WORKER_BACKOFF_BASE", gt=0)
    worker_backoff_max: Duration = Field(300.0, alias="WORKER_BACKOFF_MAX", gt=0)
    otel_traces_exporter: Literal["none", "otlp", "console", "file"] = Field(
        "none", alias="OTEL_TRACES_EXPORTER"
    )
    otel_traces_file: str = Field("taskflow-spans.jsonl", alias="OTEL_TRACES_FILE")

    def describe(self) -> dict[str, Any]:
        """Return the settings keyed by variable name, secrets masked, for start-up logs."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name.endswith("_url") and isinstance(value, str):
                value = mask_url(value)
            out[field.alias or name] = value
        return out


S = TypeVar("S", bound=CommonSettings)

_FORMS = {
    "int_parsing": "a whole number",
    "float_parsing": "a number",
    "literal_error": "one of the listed values",
    "string_pattern_mismatch": "a value matching the pattern",
}


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from ``environ`` (default ``os.environ``), validating every field.

    Empty strings count as unset. Raises :class:`ConfigError` whose message lists
    each bad variable with its value and the accepted form, e.g.
    ``WORKER_CONCURRENCY='abc': expected a whole number``.
    """
    env = os.environ if environ is None else environ
    aliases = {f.alias for f in cls.model_fields.values() if f.alias}
    data = {k: v for k, v in env.items() if k in aliases and v != ""}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            var = str(err["loc"][0]) if err["loc"] else "?"
            given = data.get(var, "")
            detail = err["msg"]
            if err["type"] in _FORMS:
                detail = f"{detail} ({_FORMS[err['type']]})"
            problems.append(f"{var}={given!r}: {detail}")
        raise ConfigError(problems) from None
