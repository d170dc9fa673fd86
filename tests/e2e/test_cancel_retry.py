"""Cancel (queued and running) and retry of a dead-lettered task, with real workers."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.stack import Stack, execution_started, parse_ts, post
from tests.support.timing import slack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(one_slot_env: dict[str, str]) -> dict[str, str]:
    """The one-slot stack's environment (``tests/e2e/conftest.py``)."""
    return one_slot_env


@pytest.fixture
def stack(one_slot_stack: Stack) -> Stack:
    """API, dispatcher, dlq-monitor and one worker with one slot (``tests/e2e/conftest.py``)."""
    return one_slot_stack


# -- cancel ------------------------------------------------------------------------------------


async def test_a_cancelled_queued_task_never_runs(stack: Stack) -> None:
    # Not yet due: the dispatcher has not published it.
    delayed = await stack.submit("demo", {"n": 1}, delay_ms=1000)
    resp = await post(stack, f"/tasks/{delayed['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["task"]["status"] == "cancelled"
    # Already published: the message is on the bus while the worker is stopped.
    assert stack.workers
    await stack.workers[0].stop()
    published = await stack.submit("demo", {"n": 2})
    await wait_for(
        lambda: stack.db_value(
            "SELECT dispatched_at IS NOT NULL FROM tasks WHERE id = $1",
            uuid.UUID(published["id"]),
        ),
        10,
        what="the task to be published",
    )
    assert (await post(stack, f"/tasks/{published['id']}/cancel")).status_code == 200
    await stack.start_worker({"WORKER_CONCURRENCY": "1"})
    # A task submitted after both, due after the delayed one, runs on the same worker:
    # once it has completed, both cancelled tasks had their chance to run.
    sentinel = await stack.submit("demo", {"n": 3}, delay_ms=1200)
    await stack.wait_status(sentinel["id"], {"completed"}, timeout=15)
    for task in (delayed, published):
        assert await stack.executions(task["id"]) == []
        assert (await stack.get(task["id"]))["status"] == "cancelled"


async def test_cancel_a_running_task_stops_it_within_a_second_and_frees_the_worker(
    stack: Stack,
) -> None:
    long = await stack.submit("test.sleep", {"sleep_s": 30})
    await execution_started(stack, long["id"])
    started = time.monotonic()
    resp = await post(stack, f"/tasks/{long['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["task"]["status"] == "cancelled"
    cancelled_at = await stack.db_value(
        "SELECT updated_at FROM tasks WHERE id = $1", uuid.UUID(long["id"])
    )
    # The worker (one slot) runs the next task right after.
    quick = await stack.submit("test.sleep", {"sleep_s": 0})
    await stack.wait_status(quick["id"], {"completed"}, timeout=10)
    elapsed = time.monotonic() - started
    quick_started = parse_ts((await stack.executions(quick["id"]))[0]["started_at"])
    assert quick_started is not None
    gap = (quick_started - cancelled_at).total_seconds()
    print(f"cancel: next task started {gap * 1000:.0f} ms after the cancel committed")
    assert gap < slack(1.0)
    assert elapsed < slack(2.0), f"next task done {elapsed:.2f} s after the cancel request"
    execs = await stack.executions(long["id"])
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "cancelled")]
    assert execs[0]["duration_ms"] < 30_000
    worker = stack.workers[0]
    await wait_for(lambda: worker.events("attempt_cancelled"), 5, what="attempt_cancelled log")
    again = await post(stack, f"/tasks/{long['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"


# -- retry ---------------------------------------------------------------------------------------


async def test_retry_a_dead_lettered_task_runs_it_again(stack: Stack) -> None:
    # Fails on attempt 1 (its only one: dead-lettered), succeeds from attempt 2 on.
    task = await stack.submit("test.flaky", {"fail_times": 1}, max_attempts=1)
    failed = await stack.wait_status(task["id"], {"failed", "completed"})
    assert failed["status"] == "failed"
    await wait_for(
        lambda: stack.dead_letters(status="open"), 15, what="the dead letter to be recorded"
    )
    resp = await post(stack, f"/tasks/{task['id']}/retry")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["task"]["status"], resp.json()["task"]["failed_attempts"]) == ("queued", 0)
    done = await stack.wait_status(task["id"])
    assert done["status"] == "completed"
    assert done["result"] == {"attempt": 2}
    execs = await stack.executions(task["id"])
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "failed"), (2, "succeeded")]
    assert await stack.dead_letters(status="replayed")
    again = await post(stack, f"/tasks/{task['id']}/retry")
    assert again.status_code == 409
