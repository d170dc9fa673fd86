"""Submit-body, query, header and cursor validation of the ingest API (pure logic)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from taskflow_common.errors import InvalidCursor
from taskflow_common.http import Problem, to_dict
from taskflow_common.http import parse_uuid as parse_task_id
from taskflow_common.spec import TaskSpec, _clean, _problems, json_problems
from taskflow_common.store.cursor import decode as decode_cursor
from taskflow_common.store.cursor import encode as encode_cursor
from taskflow_ingest_api.validation import (
    check_content_type,
    parse_idempotency_key,
    parse_list_query,
    parse_submit,
)


def submit(raw: bytes, key: str | None = None, depth: int = 64) -> TaskSpec:
    return parse_submit(raw, idempotency_key=key, default_max_attempts=3, max_depth=depth)


def problem_of(raw: bytes, depth: int = 64) -> dict[str, object]:
    with pytest.raises(Problem) as info:
        submit(raw, depth=depth)
    return to_dict(info.value)


def fields_of(doc: dict[str, object]) -> list[str]:
    errors = doc.get("errors")
    assert isinstance(errors, list)
    return [e["field"] for e in errors]


# -- the happy path -------------------------------------------------------------------


def test_minimal_body_gets_the_documented_defaults() -> None:
    spec = submit(b'{"type": "demo"}', key="k-1")
    assert spec == TaskSpec(
        type="demo", payload={}, priority="normal", max_attempts=3, idempotency_key="k-1"
    )


def test_full_body_is_kept_as_sent() -> None:
    raw = b'{"type": "mail.send:v2", "payload": [1, {"a": null}], "priority": "high",'
    raw += b' "max_attempts": 100}'
    spec = submit(raw)
    assert (spec.type, spec.payload, spec.priority, spec.max_attempts) == (
        "mail.send:v2",
        [1, {"a": None}],
        "high",
        100,
    )


def test_payload_keeps_exact_64_bit_integers_and_unicode() -> None:
    raw = '{"type": "t", "payload": {"big": 9223372036854775807, "s": "é✓\\n"}}'.encode()
    assert submit(raw).payload == {"big": 2**63 - 1, "s": "é✓\n"}


# -- 400 invalid_json -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"  \n", b"{", b'{"type": "a",}', b"{'type': 'a'}", b'{"type": "a"} x', b"\xff\xfe"],
    ids=["empty", "blank", "truncated", "trailing-comma", "single-quotes", "trailing", "binary"],
)
def test_malformed_json_is_400_invalid_json(raw: bytes) -> None:
    doc = problem_of(raw)
    assert (doc["status"], doc["code"]) == (400, "invalid_json")


# -- 422 validation_error, each naming its field ----------------------------------------


@pytest.mark.parametrize("raw", [b"[]", b'"demo"', b"1", b"null", b"true"])
def test_body_that_is_not_an_object_is_422(raw: bytes) -> None:
    doc = problem_of(raw)
    assert (doc["status"], doc["code"], fields_of(doc)) == (422, "validation_error", ["body"])


@pytest.mark.parametrize(
    "type_value",
    ['""', '"' + "a" * 129 + '"', '"has space"', '"slash/no"', '"é"', "1", "null", '["a"]'],
)
def test_bad_type_is_422_naming_type(type_value: str) -> None:
    doc = problem_of(b'{"type": ' + type_value.encode() + b"}")
    assert doc["status"] == 422
    assert fields_of(doc) == ["type"]
    assert "A-Z a-z 0-9 _ . : -" in str(doc["detail"])


def test_type_of_128_allowed_characters_is_fine() -> None:
    name = ("a.B_c:d-9" * 15)[:128]
    assert submit(f'{{"type": "{name}"}}'.encode()).type == name


def test_missing_type_is_422() -> None:
    doc = problem_of(b'{"payload": {}}')
    assert fields_of(doc) == ["type"]
    assert "required" in str(doc["detail"])


@pytest.mark.parametrize("value", ['"urgent"', '"HIGH"', "1", '["high"]', "null", '""'])
def test_bad_priority_is_422_naming_the_allowed_values(value: str) -> None:
    doc = problem_of(b'{"type": "a", "priority": ' + value.encode() + b"}")
    assert doc["status"] == 422
    assert fields_of(doc) == ["priority"]
    assert "high, normal, low" in str(doc["detail"])


@pytest.mark.parametrize("value", ["0", "101", "-1", "3.5", '"3"', "true", "1e3", "100.5"])
def test_bad_max_attempts_is_422(value: str) -> None:
    doc = problem_of(b'{"type": "a", "max_attempts": ' + value.encode() + b"}")
    assert doc["status"] == 422
    assert fields_of(doc) == ["max_attempts"]


def test_unknown_field_is_422_naming_it() -> None:
    doc = problem_of(b'{"type": "a", "priorty": "high"}')
    assert fields_of(doc) == ["priorty"]
    assert "allowed: type, payload, priority, max_attempts" in str(doc["detail"])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'"a\\u0000b"', "payload"),
        (b'{"k\\u0000": 1}', "payload.k\x00"),
        (b'{"a": [1, "x\\u0000"]}', "payload.a[1]"),
        (b"1e400", "payload"),
        (b"-1e400", "payload"),
        (b"[NaN]", "payload[0]"),
        (b'{"n": Infinity}', "payload.n"),
        (b"9223372036854775808", "payload"),
        (b"-9223372036854775809", "payload"),
        (b'{"x": 123456789012345678901234567890}', "payload.x"),
    ],
    ids=[
        "nul-in-string",
        "nul-in-key",
        "nul-nested",
        "1e400",
        "-1e400",
        "nan",
        "infinity",
        "int64-max+1",
        "int64-min-1",
        "bignum",
    ],
)
def test_payload_jsonb_cannot_hold_is_422_naming_the_path(payload: bytes, field: str) -> None:
    doc = problem_of(b'{"type": "a", "payload": ' + payload + b"}")
    assert (doc["status"], doc["code"]) == (422, "validation_error")
    assert fields_of(doc) == [field]


def test_nesting_limit_counts_containers() -> None:
    at_limit = b"[" * 64 + b"]" * 64
    assert submit(b'{"type": "a", "payload": ' + at_limit + b"}").payload is not None
    doc = problem_of(b'{"type": "a", "payload": ' + b"[" * 65 + b"]" * 65 + b"}")
    assert doc["status"] == 422
    assert fields_of(doc) == ["payload" + "[0]" * 64]
    assert "deeper than 64" in str(doc["detail"])


@pytest.mark.parametrize("depth", [150, 250, 100_000])
def test_very_deep_nesting_is_422_not_a_crash(depth: int) -> None:
    doc = problem_of(b'{"type": "a", "payload": ' + b"[" * depth + b"]" * depth + b"}")
    assert doc["status"] == 422
    assert fields_of(doc)[0].startswith("payload")


def test_several_bad_fields_are_all_listed() -> None:
    doc = problem_of(b'{"type": "", "priority": "x", "max_attempts": 0}')
    assert sorted(fields_of(doc)) == ["max_attempts", "priority", "type"]


# -- headers, ids, content type -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        'application/json; charset="utf-8"',
    ],
)
def test_json_content_types_are_accepted(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
    ],
)
def test_other_content_types_are_415(value: str | None) -> None:
    with pytest.raises(Problem) as info:
        check_content_type(value)
    assert (info.value.status_code, info.value.problem_code) == (415, "unsupported_media_type")


def test_task_id_must_be_a_canonical_uuid() -> None:
    tid = uuid.uuid4()
    assert parse_task_id(str(tid)) == tid
    assert parse_task_id(str(tid).upper()) == tid
    for bad in ["abc", "1", str(tid)[:-1], str(tid) + "0", tid.hex, "{" + str(tid) + "}", ""]:
        with pytest.raises(Problem) as info:
            parse_task_id(bad)
        assert (info.value.status_code, info.value.problem_code) == (400, "invalid_id")


def test_idempotency_key_is_1_to_255_printable_ascii() -> None:
    assert parse_idempotency_key(None) is None
    assert parse_idempotency_key("k") == "k"
    assert parse_idempotency_key("x" * 255) == "x" * 255
    for bad in ["", "x" * 256, "tab\there", "é"]:
        with pytest.raises(Problem) as info:
            parse_idempotency_key(bad)
        assert info.value.status_code == 422
        assert [e.field for e in info.value.errors] == ["Idempotency-Key"]


# -- list query -------------------------------------------------------------------------------


def test_list_query_defaults_and_filters() -> None:
    query = parse_list_query({})
    assert (query.status, query.type, query.priority, query.limit, query.cursor) == (
        None,
        None,
        None,
        50,
        None,
    )
    query = parse_list_query(
        {"status": "failed", "type": "demo", "priority": "low", "limit": "200"}
    )
    assert (query.status, query.type, query.priority, query.limit) == ("failed", "demo", "low", 200)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"status": "done"}, "status"),
        ({"priority": "HIGH"}, "priority"),
        ({"type": "no spaces"}, "type"),
        ({"stauts": "failed"}, "stauts"),
        ({"status": ["queued", "failed"]}, "status"),
    ],
)
def test_bad_list_parameters_are_422_naming_them(params: dict[str, object], field: str) -> None:
    with pytest.raises(Problem) as info:
        parse_list_query(params)
    assert info.value.status_code == 422
    assert [e.field for e in info.value.errors] == [field]


@pytest.mark.parametrize(
    "cursor", ["x", "!!!!", "AAAA", "a" * 65, "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
)
def test_foreign_cursors_are_400_invalid_cursor(cursor: str) -> None:
    with pytest.raises(Problem) as info:
        parse_list_query({"cursor": cursor})
    assert (info.value.status_code, info.value.problem_code) == (400, "invalid_cursor")


def test_cursor_round_trips_microseconds_and_id() -> None:
    at = dt.datetime(2026, 11, 29, 15, 3, 28, 123456, tzinfo=dt.UTC)
    tid = uuid.uuid4()
    cursor = encode_cursor(at, tid)
    assert decode_cursor(cursor) == (at, tid)
    assert parse_list_query({"cursor": cursor}).cursor == cursor
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor[:-2])


# -- request hash and jsonb checks --------------------------------------------------------------


def test_request_hash_ignores_key_order_and_explicit_defaults() -> None:
    a = submit(b'{"type": "t", "payload": {"a": 1, "b": [1, 2]}}', key="k")
    b = submit(b'{"priority": "normal", "payload": {"b": [1, 2], "a": 1}, "type": "t"}', key="k")
    assert a.request_hash() == b.request_hash()


@pytest.mark.parametrize(
    "other",
    [
        b'{"type": "t", "payload": {"a": 2}}',
        b'{"type": "u", "payload": {"a": 1}}',
        b'{"type": "t", "payload": {"a": 1}, "priority": "high"}',
        b'{"type": "t", "payload": {"a": 1}, "max_attempts": 4}',
        b'{"type": "t", "payload": {"a": 1.0}}',
    ],
)
def test_request_hash_changes_with_what_the_request_asks(other: bytes) -> None:
    base = submit(b'{"type": "t", "payload": {"a": 1}}')
    assert submit(other).request_hash() != base.request_hash()


def test_later_options_enter_the_hash_only_when_set() -> None:
    plain = TaskSpec(type="t")
    assert plain.request_hash() == TaskSpec(type="t", tags={}, timeout_s=None).request_hash()
    assert plain.request_hash() != TaskSpec(type="t", timeout_s=5.0).request_hash()
    assert plain.request_hash() != TaskSpec(type="t", tags={"a": "b"}).request_hash()


def test_json_problems_accepts_every_plain_json_value() -> None:
    value = {"s": "x", "i": -(2**63), "f": 1.5e300, "b": True, "n": None, "l": [[], {}]}
    assert json_problems(value, "payload", 64) == []


@pytest.mark.parametrize(
    "value",
    [
        {},
        [True, False, None, 0, -1.5, "s"],
        {"a": {"b": [{"c": "d"}]}},
        2**63,
        float("inf"),
        float("nan"),
        "x\x00",
        {"k\x00": 1},
        [[[[1]]]],
        [[[[[1]]]]],
        [{"ok": 1}, {"bad": -(2**63) - 1}],
        [1, {1, 2}],
    ],
)
def test_quick_check_and_located_problems_agree(value: object) -> None:
    """json_problems answers from a fast pass; a problem it finds must also be located."""
    assert _clean(value, 4) == (not _problems(value, "payload", 4))
