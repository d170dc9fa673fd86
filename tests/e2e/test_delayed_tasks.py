"""Delayed tasks end to end: ``delay_ms`` and ``run_at`` start when due, not before.

Submit and start are both database timestamps; the upper bounds are scaled by
``tests.support.timing.SLACK``, the lower ones (never before ``run_at``) are not.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.stack import Stack, parse_ts
from tests.support.timing import floor_plus, slack

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(one_slot_env: dict[str, str]) -> dict[str, str]:
    """The one-slot stack's environment (``tests/e2e/conftest.py``)."""
    return one_slot_env


@pytest.fixture
def stack(one_slot_stack: Stack) -> Stack:
    """API, dispatcher, dlq-monitor and one worker with one slot (``tests/e2e/conftest.py``)."""
    return one_slot_stack


# -- delayed tasks ---------------------------------------------------------------------------


async def test_delay_ms_2000_starts_between_2_and_2_2_seconds_after_submit(stack: Stack) -> None:
    task = await stack.submit("demo", {"x": 1}, delay_ms=2000)
    assert task["status"] == "queued"
    assert parse_ts(task["run_at"]) > parse_ts(task["created_at"])  # type: ignore[operator]
    await stack.wait_status(task["id"], {"completed"}, timeout=15)
    lag = await stack.db_value(
        "SELECT extract(epoch FROM e.started_at - t.created_at) FROM tasks t "
        "JOIN task_executions e ON e.task_id = t.id WHERE t.id = $1",
        uuid.UUID(task["id"]),
    )
    print(f"delay_ms=2000: started {lag:.3f} s after submit")
    assert 2.0 <= lag <= floor_plus(2.0, 0.2), f"started {lag:.3f} s after submit"


async def test_a_task_is_published_within_100_ms_of_run_at_at_idle(stack: Stack) -> None:
    at = await stack.db_value("SELECT now() + interval '1.5 seconds'")
    task = await stack.submit("demo", {}, run_at=at.isoformat())
    await stack.wait_status(task["id"], {"completed"}, timeout=15)
    row = (
        await stack.db_rows(
            "SELECT extract(epoch FROM e.started_at - t.run_at) AS late, "
            "extract(epoch FROM t.dispatched_at - t.run_at) AS published FROM tasks t "
            "JOIN task_executions e ON e.task_id = t.id WHERE t.id = $1",
            uuid.UUID(task["id"]),
        )
    )[0]
    late = row["late"]
    print(
        f"run_at: published {row['published'] * 1000:.1f} ms and started "
        f"{late * 1000:.1f} ms after run_at"
    )
    # Published when due (the dispatcher sleeps until the earliest run_at), started by
    # the idle worker right after (its doorbell rings on publish).
    assert 0 <= row["published"] <= slack(0.1)
    assert late <= slack(0.2)
