"""Pure parts of taskflow_client: URLs, request bodies, wait steps, reading responses.

``httpx.Response`` objects are built directly (no server, no mock transport): what is
tested is how the client reads a given answer, e.g. a proxy's HTML 502 page.
"""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest

from taskflow_client import calls
from taskflow_client.errors import (
    Conflict,
    NotFound,
    TaskFlowAPIError,
    Unavailable,
    ValidationFailed,
    from_response,
    from_transport,
)
from taskflow_client.models import NewTask, Task, parse_time

URL = "http://127.0.0.1:8080/api/v1/tasks"


def response(status: int, body: object = None, *, text: str | None = None) -> httpx.Response:
    request = httpx.Request("GET", URL)
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


@pytest.mark.parametrize(
    "given",
    ["http://h:8080", "http://h:8080/", "http://h:8080/api/v1", "http://h:8080/api/v1/"],
)
def test_base_url_adds_the_api_prefix_once(given: str) -> None:
    assert calls.base_url(given) == "http://h:8080/api/v1"


def test_task_ids_are_canonical_uuids() -> None:
    tid = uuid.uuid4()
    assert calls.task_id(tid) == str(tid)
    assert calls.task_id(str(tid).upper()) == str(tid)
    with pytest.raises(ValidationFailed) as info:
        calls.task_id("../dlq")
    assert info.value.code == "invalid_id"


def test_wait_steps_cover_the_whole_timeout() -> None:
    assert calls.wait_step(150.0) == 60.0
    assert calls.wait_step(1.5) == 1.5
    assert calls.wait_step(0.005) is None
    call = calls.get(uuid.UUID(int=1), wait_s=1.5)
    assert list(call.params) == [("wait", "1500ms")]
    assert call.extra_timeout_s == 1.5
    assert calls.poll_pause(0.2) == 0.2
    assert calls.poll_pause(-1) == 0.0
    assert calls.poll_pause(10) == calls.POLL_FLOOR_S


def test_new_task_body_leaves_out_unset_options() -> None:
    assert NewTask("demo").body(with_key=True) == {"type": "demo", "priority": "normal"}
    at = dt.datetime(2030, 1, 2, 4, 4, 5, 120000, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    full = NewTask(
        "demo",
        {"a": 1},
        priority="high",
        max_attempts=2,
        run_at=at,
        timeout_s=1.5,
        tags={"k": "v"},
        idempotency_key="key",
    )
    assert full.body(with_key=True) == {
        "type": "demo",
        "priority": "high",
        "payload": {"a": 1},
        "max_attempts": 2,
        "run_at": "2030-01-02T03:04:05.120000Z",
        "timeout_s": 1.5,
        "tags": {"k": "v"},
        "idempotency_key": "key",
    }
    assert "idempotency_key" not in full.body(with_key=False)
    with pytest.raises(ValueError, match="run_at"):
        NewTask("demo", run_at=dt.datetime(2030, 1, 1)).body(with_key=False)  # noqa: DTZ001


def test_submit_sends_the_key_as_a_header() -> None:
    call = calls.submit(NewTask("demo", idempotency_key="k-1"))
    assert call.headers == {"Idempotency-Key": "k-1"}
    assert "idempotency_key" not in call.json


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ValidationFailed),
        (404, NotFound),
        (409, Conflict),
        (422, ValidationFailed),
        (500, TaskFlowAPIError),
        (502, Unavailable),
        (503, Unavailable),
    ],
)
def test_problems_become_exceptions_by_status(status: int, cls: type[Exception]) -> None:
    problem = {
        "type": "https://taskflow.dev/problems/x",
        "title": "Some title",
        "status": status,
        "detail": "what happened",
        "code": "some_code",
        "errors": [{"field": "tasks[2].type", "message": "bad"}],
        "index": 2,
    }
    exc = from_response(response(status, problem))
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.detail, exc.title) == (
        status,
        "some_code",
        "what happened",
        "Some title",
    )
    assert [(e.field, e.message) for e in exc.errors] == [("tasks[2].type", "bad")]
    assert exc.problem["index"] == 2
    assert str(exc) == f"{status} some_code: what happened"


def test_a_non_problem_error_body_still_gives_a_coded_error() -> None:
    exc = from_response(response(502, text="<html>Bad Gateway</html>"))
    assert isinstance(exc, Unavailable)
    assert (exc.code, exc.detail) == ("http_502", "<html>Bad Gateway</html>")
    empty = from_response(response(418, text=""))
    assert (type(empty), empty.code) == (TaskFlowAPIError, "http_418")


def test_transport_errors_are_unavailable() -> None:
    request = httpx.Request("GET", URL)
    refused = from_transport(httpx.ConnectError("refused", request=request), URL)
    assert (refused.code, refused.status) == ("unreachable", None)
    slow = from_transport(httpx.ReadTimeout("slow", request=request), URL)
    assert slow.code == "timeout"


def test_a_malformed_success_body_is_an_invalid_response() -> None:
    call = calls.get(uuid.UUID(int=1))
    with pytest.raises(TaskFlowAPIError) as info:
        calls.finish(call, response(200, {"task": {"id": "x"}}))
    assert info.value.code == "invalid_response"
    with pytest.raises(TaskFlowAPIError) as html:
        calls.finish(call, response(200, text="<html>"))
    assert html.value.code == "invalid_response"


def test_task_json_parses_to_typed_fields() -> None:
    doc = {
        "id": "0b7c6f1e-0000-4000-8000-000000000001",
        "type": "demo",
        "payload": {"x": 1},
        "priority": "normal",
        "status": "completed",
        "attempts": 1,
        "max_attempts": 3,
        "version": 4,
        "last_error": None,
        "result": {"x": 1},
        "created_at": "2026-11-29T15:03:28.123456Z",
        "updated_at": "2026-11-29T15:03:29.000001Z",
        "started_at": "2026-11-29T15:03:28.500000Z",
        "finished_at": "2026-11-29T15:03:29.000001Z",
        "failed_attempts": 0,
        "run_at": "2026-11-29T15:03:28.123456Z",
        "timeout_s": None,
        "tags": {"k": "v"},
        "added_by_a_newer_server": True,
    }
    task = Task.from_json(doc)
    assert task.terminal
    assert task.created_at == dt.datetime(2026, 11, 29, 15, 3, 28, 123456, tzinfo=dt.UTC)
    assert task.tags == {"k": "v"}
    assert task.raw["added_by_a_newer_server"] is True
    with pytest.raises(ValueError, match="offset"):
        parse_time("2026-11-29T15:03:28")
