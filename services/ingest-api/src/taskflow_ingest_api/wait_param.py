"""The ``?wait=`` parameter of ``GET /api/v1/tasks/{id}`` (the long poll), checked.

:data:`WAIT_PATTERN` is what the OpenAPI document declares and what :func:`parse_wait`
applies, so that the two accept the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from taskflow_common.http import FieldError, validation_error

MAX_WAIT_MS = 60_000
"""Longest ``?wait=`` on ``GET /api/v1/tasks/{id}``: 60 s."""
WAIT_RULE = "must be a duration like 500ms or 30s, at most 60s"
WAIT_PATTERN = r"^0*(?:(?:[0-9]{1,4}|[1-5][0-9]{4}|60000)ms|(?:[0-9]|[1-5][0-9]|60)s)$"
"""``?wait=``: 0..60000 ms or 0..60 s (leading zeros allowed); the document says the same."""
GET_PARAMS = ("wait",)

_WAIT = re.compile(WAIT_PATTERN)
_WAIT_PARTS = re.compile(r"^([0-9]+)(ms|s)$")


def parse_wait(params: Mapping[str, Any]) -> float | None:
    """Return ``?wait=`` of ``GET /api/v1/tasks/{id}`` in seconds (None when absent).

    Accepts :data:`WAIT_PATTERN`: ``<n>ms`` or ``<n>s`` up to 60 s (``0s`` answers at
    once). Anything else, and any other parameter, is 422 ``validation_error``.
    """
    errors = [
        FieldError(name, f"unknown parameter (allowed: {', '.join(GET_PARAMS)})")
        for name in params
        if name not in GET_PARAMS
    ]
    value = params.get("wait")
    seconds: float | None = None
    if value is not None:
        # The pattern bounds the value; leading zeros go before int() (which refuses
        # more than 4,300 digits).
        match = _WAIT_PARTS.match(value) if isinstance(value, str) and _WAIT.match(value) else None
        if match:
            number = int(match[1].lstrip("0") or "0")
            seconds = number * (1 if match[2] == "ms" else 1000) / 1000
        else:
            errors.append(FieldError("wait", WAIT_RULE))
    if errors:
        raise validation_error(errors)
    return seconds
