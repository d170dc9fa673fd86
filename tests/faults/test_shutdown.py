"""Graceful shutdown: scenarios 9 and 13 of issue 4.

SIGTERM lets a running task finish and confirms its ack before the worker exits 0; a
handler that outlives the grace period is interrupted (not failed, not counted) and
promptly picked up by another worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from pathlib import Path

import asyncpg
import pytest

from tests.faults.conftest import ACK_WAIT_S, GRACE_S, MakeStack, worker_of
from tests.support.faults import consumer_info, db_now, executions, statuses, stream_info
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.stack import Stack
from tests.support.timing import floor_plus, slack
from tests.support.traces import overlapping, runs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

TASK_S = 1.0
"""Scenario 9's task (the issue's 5 s, scaled)."""
TERM_AT_S = 0.4
"""When SIGTERM arrives, seconds into the task (the issue's 2 s)."""
ROUNDS = 10
"""SIGTERM rounds (the issue's 20, halved to fit the suite's time budget)."""


async def _running_on(stack: Stack, task_id: str, attempt: int) -> dict[str, object]:
    """Wait until ``attempt`` of the task has started; return that execution."""

    async def started() -> dict[str, object] | None:
        execs = await executions(stack, task_id)
        return execs[attempt - 1] if len(execs) >= attempt else None

    return await wait_for(started, 15, what=f"attempt {attempt} to start")


async def _until_db_time(stack: Stack, when: dt.datetime) -> None:
    """Wait until the database clock passes ``when`` (the fault's injection point)."""

    async def reached() -> bool:
        return await db_now(stack) >= when

    await wait_for(reached, 30, interval=0.02, what=f"db clock to reach {when}")


async def test_sigterm_mid_task_completes_and_acks_before_exit(make_stack: MakeStack) -> None:
    """Scenario 9: SIGTERM 0.4 s into a 1 s task, ten times; exit 0, one execution each."""
    stack = await make_stack(workers=2)
    ids: list[str] = []
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        for _ in range(ROUNDS):
            task = await stack.submit("test.sleep", {"sleep_s": TASK_S})
            ids.append(task["id"])
            first = await _running_on(stack, task["id"], 1)
            worker = worker_of(stack, str(first["worker_id"]))
            await _until_db_time(stack, first["started"] + dt.timedelta(seconds=TERM_AT_S))  # type: ignore[operator]
            worker.terminate()
            replacement = asyncio.create_task(stack.start_worker())  # a rolling restart
            assert await worker.wait(timeout=GRACE_S + 10) == 0
            done = await stack.get(task["id"])
            assert done["status"] == "completed", done
            # The final ack was confirmed by the server before the exit: nothing is left
            # in the work-queue stream to redeliver, nothing is ack-pending.
            stream = await stream_info(stack.env)
            assert stream is not None
            assert stream.state.messages == 0
            assert (await consumer_info(stack.env, "normal")).num_ack_pending == 0
            await replacement
        # A redelivery would come after ack_wait; watch that long (no positive signal
        # exists for "nothing else happened").
        await asyncio.sleep(ACK_WAIT_S + 0.5)
        for tid in ids:
            assert statuses(await executions(stack, tid)) == ["succeeded"]
        report = await check_invariants(stack, ids, deadline_s=10, watcher=watcher)
    report.assert_ok()


async def test_rolling_sigterms_interrupt_without_using_attempts(make_stack: MakeStack) -> None:
    """Scenario 13: three rolling SIGTERMs, each 1 s into a 6 s task, grace 0.5 s.

    The issue's 120 s task / 20 s / 10 s grace at 1/20. With max_attempts 3 the task
    still completes on its 4th run: interrupted runs do not count.
    """
    grace = 0.5
    stack = await make_stack(
        workers=2, env={"WORKER_SHUTDOWN_GRACE": f"{grace}s", "WORKER_MAX_ATTEMPTS": "3"}
    )
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.sleep", {"sleep_s": 6.0})
        for attempt in (1, 2, 3):
            run = await _running_on(stack, task["id"], attempt)
            worker = worker_of(stack, str(run["worker_id"]))
            await _until_db_time(stack, run["started"] + dt.timedelta(seconds=1))  # type: ignore[operator]
            worker.terminate()
            replacement = asyncio.create_task(stack.start_worker())
            assert await worker.wait(timeout=grace + 10) == 0
            await replacement
        done = await stack.wait_status(task["id"], timeout=20)
        assert done["status"] == "completed"
        assert done["attempts"] == 4
        execs = await executions(stack, task["id"])
        assert statuses(execs) == ["interrupted"] * 3 + ["succeeded"]
        for prev, nxt in itertools.pairwise(execs):
            gap = (nxt["started"] - prev["finished"]).total_seconds()
            assert gap <= slack(1.5), (
                f"attempt {nxt['attempt']} started {gap:.2f}s after the interrupt"
            )
        report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
    report.assert_ok()
    failed_attempts = await stack.db_value(
        "SELECT failed_attempts FROM tasks WHERE id = $1::uuid", task["id"]
    )
    assert failed_attempts == 0


HOLD_CLAIM = 4_242_002
"""Advisory lock the test holds to keep a worker's claim waiting in Postgres."""


async def test_sigterm_while_a_claim_is_in_flight_still_respects_the_grace(
    make_stack: MakeStack,
) -> None:
    """Scenario 9/13 variant: SIGTERM lands while the worker's claim waits on Postgres.

    The claim commits after the drain began; the handler it opens must still be bound by
    the grace period (interrupted, not counted), so the worker exits in about the grace
    instead of running a long task to its end after SIGTERM.
    """
    grace = 1.0
    task_s = 6.0
    stack = await make_stack(workers=1, env={"WORKER_SHUTDOWN_GRACE": f"{grace}s"})
    holder = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await holder.execute(
            f"""
            CREATE FUNCTION fault_hold_claim() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.status = 'processing' AND OLD.status <> 'processing' THEN
                    PERFORM pg_advisory_xact_lock_shared({HOLD_CLAIM});
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fault_hold_claim BEFORE UPDATE ON tasks
                FOR EACH ROW EXECUTE FUNCTION fault_hold_claim();
            """
        )
        await holder.execute("SELECT pg_advisory_lock($1)", HOLD_CLAIM)
        async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
            task = await stack.submit("test.sleep", {"sleep_s": task_s})

            async def claim_waiting() -> bool:
                n = await holder.fetchval(
                    """SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objid = $1 AND NOT granted""",
                    HOLD_CLAIM,
                )
                return n == 1

            await wait_for(claim_waiting, 15, what="the worker's claim to wait on the lock")
            worker = stack.workers[0]
            worker.terminate()
            sent = time.monotonic()
            await wait_for(lambda: worker.events("worker_draining"), 10, what="the drain")
            # Unlock first: dropping the trigger waits for the claim's table lock.
            await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_CLAIM)
            await holder.execute("DROP TRIGGER fault_hold_claim ON tasks")
            assert await worker.wait(timeout=task_s + 10) == 0
            took = time.monotonic() - sent
            assert took < floor_plus(grace, 2.5), f"the worker exited {took:.1f}s after SIGTERM"
            await stack.start_worker()
            done = await stack.wait_status(task["id"], timeout=task_s + 15)
            assert done["status"] == "completed"
            execs = await executions(stack, task["id"])
            assert statuses(execs)[-1] == "succeeded"
            assert set(statuses(execs)[:-1]) <= {"interrupted"}
            report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
        report.assert_ok()
    finally:
        await holder.close()


@pytest.mark.service_errors(
    r'"event":"handler_stuck"', "the handler swallows its cancellation", service="worker"
)
async def test_a_handler_that_ignores_its_timeout_keeps_its_slot_until_it_ends(
    make_stack: MakeStack,
) -> None:
    """Issue 11, smaller: a handler swallows ``CancelledError`` after its timeout.

    It is declared stuck (an ERROR names the task) but not recorded while it runs: it
    keeps its slot (the next task waits), and its real outcome is recorded once it ends.
    """
    stack = await make_stack(workers=1, worker_env={"WORKER_CONCURRENCY": "1"})
    worker = stack.workers[0]
    stuck = await stack.submit("test.stubborn", {"sleep_s": 4.0}, timeout_s=1, max_attempts=1)

    async def declared_stuck() -> bool:
        return any(e.get("task_id") == stuck["id"] for e in worker.events("handler_stuck"))

    await wait_for(declared_stuck, 15, what="handler_stuck")
    after = await stack.submit("demo", {"n": 1})
    assert (await stack.get(stuck["id"]))["status"] == "processing"
    assert (await stack.get(after["id"]))["status"] != "completed"
    done = await stack.wait_status(stuck["id"], timeout=15)
    assert done["status"] == "completed", done
    assert statuses(await executions(stack, stuck["id"])) == ["succeeded"]
    # The slot is free again once the stuck handler ended: the next task runs.
    assert (await stack.wait_status(after["id"], timeout=15))["status"] == "completed"


@pytest.mark.service_errors(
    r'"event":"(handler_stuck|exiting_with_stuck_handlers)"',
    "the handler swallows its cancellation",
    service="worker",
)
async def test_sigterm_with_a_handler_that_ignores_cancellation_still_exits(
    make_stack: MakeStack,
) -> None:
    """Issue 11, smaller: drain must end although a handler swallows ``CancelledError``.

    The stuck attempt is left to its lease (recording it would let a retry start while
    the coroutine still runs): the reaper abandons it after the process is gone.
    """
    stack = await make_stack(workers=1)
    worker = stack.workers[0]
    task = await stack.submit("test.stubborn", {})
    await stack.wait_status(task["id"], {"processing"}, timeout=15)
    worker.terminate()
    # The grace, then at most a few seconds for the stuck handler: not the harness's kill.
    assert await worker.wait(timeout=GRACE_S + 5) == 0
    assert any(e.get("task_id") == task["id"] for e in worker.events("handler_stuck"))

    async def abandoned() -> list[str] | None:
        found = statuses(await executions(stack, task["id"]))
        return found if found and found[0] != "started" else None

    assert await wait_for(abandoned, ACK_WAIT_S + 10, what="the reaper") == ["abandoned"]


STUBBORN_S = 5.0
"""How long the stubborn handler runs past its 1 s timeout (longer than timeout + unwind)."""


@pytest.mark.service_errors(
    r'"event":"(handler_stuck|exiting_with_stuck_handlers)"',
    "the handler swallows its cancellation",
    service="worker",
)
async def test_a_stuck_handler_is_not_retried_while_it_still_runs(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Issue 11 review, item 1: a timed-out handler ignores its cancellation for 5 s.

    With two workers, no second run of the task may start while the first still runs:
    the stuck attempt keeps its lease until its coroutine ends, then its real outcome
    (here: it returned) is recorded.
    """
    trace = tmp_path / "trace.jsonl"
    stack = await make_stack(workers=2)
    task = await stack.submit(
        "test.stubborn",
        {"sleep_s": STUBBORN_S, "trace": str(trace)},
        timeout_s=1,
        max_attempts=2,
    )
    done = await stack.wait_status(task["id"], timeout=STUBBORN_S * 2 + 15)
    found = runs(trace, task["id"])
    assert overlapping(found, time.time()) == [], found
    assert done["status"] == "completed", done
    assert statuses(await executions(stack, task["id"])) == ["succeeded"]
    assert any(
        e.get("task_id") == task["id"] for w in stack.workers for e in w.events("handler_stuck")
    )
