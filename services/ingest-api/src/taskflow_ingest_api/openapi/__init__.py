"""The ingest API's OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json``.

Hand-written next to the code it describes, in three parts: :mod:`.schemas` (components:
request and response schemas, headers, :data:`PROBLEM_CODES`), :mod:`.paths` (every
task route) and :mod:`.schedules` (the schedules' schemas and routes). The request
schemas state the same limits as the validation (:mod:`taskflow_common.spec`, imported
from there), the response schemas the JSON of
:mod:`taskflow_common.store.rows`. A schemathesis run against the real process in the
test suite (``tests/e2e/test_openapi.py``) keeps the two true to each other: no 5xx,
and every status code, content type, header and body as documented.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from taskflow_ingest_api.openapi import schedules
from taskflow_ingest_api.openapi.paths import API, paths
from taskflow_ingest_api.openapi.schemas import HEADERS, PROBLEM_CODES, SCHEMAS

__all__ = ["API", "PROBLEM_CODES", "document"]


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TaskFlow ingest API",
            "version": "1",
            "description": "Submit, inspect, await, cancel and retry tasks; define periodic "
            "tasks (schedules). Every error is "
            "application/problem+json with a stable `code`.",
        },
        "servers": [{"url": "/"}],
        "paths": {**paths(), **schedules.paths()},
        "components": {"schemas": {**SCHEMAS, **schedules.SCHEMAS}, "headers": HEADERS},
    }


def document() -> dict[str, Any]:
    """Return a copy of the OpenAPI 3.1 document (a plain JSON-able dict)."""
    return copy.deepcopy(_document())
