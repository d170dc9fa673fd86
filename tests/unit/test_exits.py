"""The teardown check's judgement of a service's log and exit (tests/support/exits.py)."""

from __future__ import annotations

import pytest

from tests.support.exits import Allowance, error_lines, exit_problem, is_error_line

LOG = """\
{"level":"info","event":"service_ready"}
{"level":"warning","event":"record_unavailable"}
{"level":"error","event":"handle_failed","error":"boom"}
{"level":"warning","event":"pool","exc":"Traceback (most recent call last):\\n..."}
plain text
ERROR:    uvicorn could not bind
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: bad
  + Exception Group Traceback (most recent call last):
  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    | asyncpg.exceptions._base.InternalClientError: another operation is in progress
    +------------------------------------
"""


def test_error_levels_and_tracebacks_are_flagged() -> None:
    found = error_lines(LOG, [])
    assert [line.split("=>")[-1].strip()[:40] for line in found] == [
        '{"level":"error","event":"handle_failed"',
        '{"level":"warning","event":"pool","exc":',
        "ERROR:    uvicorn could not bind",
        "ValueError: bad",
        "asyncpg.exceptions._base.InternalClientE",
        "asyncpg.exceptions._base.InternalClientE",
    ]
    assert not is_error_line('{"level":"warning","event":"record_unavailable"}')


def test_an_allowance_covers_the_lines_it_matches_including_the_exception() -> None:
    rules = [
        Allowance.of(r'"event":"handle_failed"', "the test fails a handler"),
        Allowance.of(r"InternalClientError", "a known bug"),
    ]
    left = [line.split("=>")[-1].strip()[:20] for line in error_lines(LOG, rules)]
    assert left == ['{"level":"warning","', "ERROR:    uvicorn co", "ValueError: bad"]


def test_an_allowance_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        Allowance.of("x", " ")


@pytest.mark.parametrize(
    ("code", "kw", "problem"),
    [
        (0, {}, None),
        (1, {"died_by_itself": True}, "exited with 1 by itself during the test"),
        (143, {}, "exited with 143 after SIGTERM"),
        (-9, {"forced": True}, "did not exit within 10 s of SIGTERM"),
        (-9, {"expected": "killed by the test"}, None),
        (2, {"seen": True}, None),
    ],
)
def test_exit_codes(code: int, kw: dict[str, object], problem: str | None) -> None:
    args: dict[str, object] = {
        "expected": None,
        "seen": False,
        "forced": False,
        "died_by_itself": False,
        "timeout_s": 10.0,
    } | kw
    found = exit_problem(code, **args)  # type: ignore[arg-type]
    assert (found is None) == (problem is None), found
    if problem is not None:
        assert found is not None
        assert found.startswith(problem)
