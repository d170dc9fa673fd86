"""The schedule part of the OpenAPI document and its validation agree (issue 15).

What schemathesis's all-checks run needs: integral floats are integers, every cursor the
document's pattern admits is one the API reads, ``cron`` and ``every`` exclude each other
in the schema as they do in the validation, and every interval text the pattern admits is
one the parser reads (its range, 1s..366d, is a documented 422).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from taskflow_common.config import parse_duration
from taskflow_common.http import Problem
from taskflow_common.store.schedules import decode_cursor
from taskflow_ingest_api.openapi import document
from taskflow_ingest_api.schedule_validation import parse_change, parse_schedule

DOC = document()
_REGISTRY = Registry().with_resource("urn:doc", Resource.from_contents(DOC, DRAFT202012))
CURSOR = next(
    p["schema"]["pattern"]
    for p in DOC["paths"]["/api/v1/schedules"]["get"]["parameters"]
    if p["name"] == "cursor"
)
EVERY = DOC["components"]["schemas"]["ScheduleSpec"]["properties"]["every"]["oneOf"][0]


def _valid(schema: str, body: dict[str, Any]) -> bool:
    ref = {"$ref": f"urn:doc#/components/schemas/{schema}"}
    return Draft202012Validator(ref, registry=_REGISTRY).is_valid(body)


def test_integral_floats_are_integers() -> None:
    raw = b'{"name": "a", "task": {"type": "t", "max_attempts": 3.0}, "every": "1s", '
    spec = parse_schedule(raw + b'"catch_up_max": 999.0}', max_depth=64)
    assert (spec.max_attempts, spec.policy.catch_up_max) == (3, 999)
    assert parse_change(b'{"catch_up_max": 7.0}', max_depth=64).catch_up_max == 7


@given(st.from_regex(CURSOR))
def test_every_cursor_the_document_allows_is_read(cursor: str) -> None:
    assert decode_cursor(cursor)


@given(st.from_regex(EVERY["pattern"]).filter(lambda s: len(s) <= EVERY["maxLength"]))
def test_every_interval_text_the_document_allows_parses(text: str) -> None:
    assert parse_duration(text) >= 0


TASK = {"type": "t"}


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"name": "a", "task": TASK, "every": "30s"}, True),
        ({"name": "a", "task": TASK, "cron": "* * * * *", "timezone": "UTC"}, True),
        ({"name": "a", "task": TASK, "cron": "* * * * *", "every": "30s"}, False),
        ({"name": "a", "task": TASK, "every": 30, "timezone": "UTC"}, False),
        ({"name": "a", "task": TASK}, False),
    ],
)
def test_create_needs_cron_or_every(body: dict[str, Any], valid: bool) -> None:
    assert _valid("ScheduleSpec", body) is valid
    if not valid:
        with pytest.raises(Problem) as caught:
            parse_schedule(json.dumps(body).encode(), max_depth=64)
        assert caught.value.status == 422


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({}, True),
        ({"cron": "* * * * *", "timezone": "UTC"}, True),
        ({"every": "1s", "missed": None, "paused": None, "task": None}, True),
        ({"cron": "* * * * *", "every": "1s"}, False),
        ({"every": "1s", "timezone": "UTC"}, False),
    ],
)
def test_a_change_gives_cron_or_every(body: dict[str, Any], valid: bool) -> None:
    assert _valid("ScheduleChange", body) is valid
