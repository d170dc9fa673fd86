"""Message codecs: round trips and the reasons given for malformed input."""

from __future__ import annotations

import uuid

import pytest

from taskflow_common.errors import MalformedMessage
from taskflow_common.messages import CancelRequest, DeadLetter, TaskMessage


def test_task_message_round_trips() -> None:
    msg = TaskMessage(uuid.uuid4(), attempt=2, dispatch=3, priority="high")
    assert TaskMessage.decode(msg.encode()) == msg


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"task_id": "x"}', "missing fields: attempt, dispatch, priority"),
        (b'{"task_id": "x", "attempt": 1, "dispatch": 1, "priority": "high"}', "not a UUID"),
        (
            b'{"task_id": "6f1c1d0e-7c9a-4a47-9a43-0d1f1b0b8c11", "attempt": 0, '
            b'"dispatch": 1, "priority": "high"}',
            "attempt must be a positive integer",
        ),
        (
            b'{"task_id": "6f1c1d0e-7c9a-4a47-9a43-0d1f1b0b8c11", "attempt": 1, '
            b'"dispatch": true, "priority": "high"}',
            "dispatch must be a positive integer",
        ),
        (
            b'{"task_id": "6f1c1d0e-7c9a-4a47-9a43-0d1f1b0b8c11", "attempt": 1, '
            b'"dispatch": 1, "priority": "urgent"}',
            "unknown priority 'urgent'",
        ),
    ],
)
def test_malformed_task_messages_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        TaskMessage.decode(data)
    assert reason in caught.value.reason


def test_dead_letter_round_trips_with_raw_bytes() -> None:
    letter = DeadLetter(reason="malformed message: not JSON", subject="tasks.high", raw=b"\x00\xff")
    assert DeadLetter.decode(letter.encode()) == letter


@pytest.mark.parametrize("data", [b"{}", b'{"reason": "x", "task_id": 5}', b'{"reason": 1}', b"?"])
def test_bad_dead_letters_raise_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        DeadLetter.decode(data)


def test_cancel_request_round_trips_and_rejects_garbage() -> None:
    req = CancelRequest(uuid.uuid4())
    assert CancelRequest.decode(req.encode()) == req
    fenced = CancelRequest(uuid.uuid4(), 3)
    assert CancelRequest.decode(fenced.encode()) == fenced
    with pytest.raises(MalformedMessage):
        CancelRequest.decode(b'{"task": 1}')
    for attempt in (b'"2"', b"0", b"true", b"1.5"):
        with pytest.raises(MalformedMessage):
            CancelRequest.decode(
                b'{"task_id": "%s", "attempt": %s}' % (str(req.task_id).encode(), attempt)
            )
    with pytest.raises(MalformedMessage):
        CancelRequest.decode(b"[1]")
