"""The OpenAPI document and the validation accept the same requests (issue 11).

schemathesis's ``positive_data_acceptance`` check (ST202) found schema-valid requests
that the API refused: integral floats where the document says ``integer``, waits longer
than 60 s that the document's pattern allowed, cursors of any shape. Each of those is
checked here against the document itself, with values drawn from its own patterns.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskflow_common.http import Problem
from taskflow_common.store.cursor import CURSOR_PATTERN
from taskflow_common.store.cursor import decode as decode_cursor
from taskflow_ingest_api.openapi import document
from taskflow_ingest_api.validation import parse_batch, parse_list_query, parse_submit
from taskflow_ingest_api.wait_param import MAX_WAIT_MS, parse_wait

DOC = document()


def _param(path: str, name: str) -> dict[str, Any]:
    for param in DOC["paths"][path]["get"]["parameters"]:
        if param.get("name") == name:
            return param["schema"]  # type: ignore[no-any-return]
    raise AssertionError(f"{path} has no parameter {name}")


WAIT = _param("/api/v1/tasks/{task_id}", "wait")["pattern"]
CURSOR = _param("/api/v1/tasks", "cursor")["pattern"]


@pytest.mark.parametrize("value", ["26.0", "1e2", "1.0", "100.0"])
def test_integral_floats_are_integers(value: str) -> None:
    raw = f'{{"type": "a", "max_attempts": {value}, "delay_ms": {value}}}'.encode()
    spec = parse_submit(raw, idempotency_key=None, default_max_attempts=3, max_depth=64)
    assert spec.max_attempts == int(float(value))
    assert spec.delay_s == int(float(value)) / 1000
    assert type(spec.max_attempts) is int


def test_integral_floats_are_integers_in_a_batch() -> None:
    raw = b'{"tasks": [{"type": "a", "max_attempts": 26.0}, {"type": "b", "delay_ms": 8789.0}]}'
    specs = parse_batch(raw, default_max_attempts=3, max_depth=64)
    assert [s.max_attempts for s in specs] == [26, 3]
    assert specs[1].delay_s == 8.789


def test_an_integral_float_hashes_as_its_integer() -> None:
    def spec(value: str) -> bytes:
        raw = f'{{"type": "a", "max_attempts": {value}}}'.encode()
        return parse_submit(
            raw, idempotency_key="k", default_max_attempts=3, max_depth=64
        ).request_hash()

    assert spec("26.0") == spec("26")


@given(st.from_regex(WAIT, fullmatch=True))
def test_every_wait_the_document_allows_is_accepted(value: str) -> None:
    seconds = parse_wait({"wait": value})
    assert seconds is not None
    assert 0 <= seconds * 1000 <= MAX_WAIT_MS


@given(st.from_regex(r"\A[0-9]{1,7}(ms|s)\Z"))
def test_the_wait_pattern_says_what_the_parser_accepts(value: str) -> None:
    allowed = re.match(WAIT, value) is not None
    try:
        parse_wait({"wait": value})
    except Problem:
        accepted = False
    else:
        accepted = True
    assert accepted == allowed, value


@pytest.mark.parametrize("value", ["303119ms", "60001ms", "61s", "1.5s", "60000", "s"])
def test_waits_past_60s_or_malformed_are_outside_the_document(value: str) -> None:
    assert re.match(WAIT, value) is None
    with pytest.raises(Problem):
        parse_wait({"wait": value})


@given(st.from_regex(CURSOR, fullmatch=True))
def test_every_cursor_the_document_allows_is_accepted(value: str) -> None:
    assert CURSOR == CURSOR_PATTERN
    decode_cursor(value)
    assert parse_list_query({"cursor": value}).cursor == value


@pytest.mark.parametrize("value", ["0", "AAAA", "BQ" + "A" * 32, "AQ" + "A" * 33])
def test_other_cursors_are_outside_the_document(value: str) -> None:
    assert re.match(CURSOR, value) is None
    with pytest.raises(Problem) as info:
        parse_list_query({"cursor": value})
    assert info.value.problem_code == "invalid_cursor"
