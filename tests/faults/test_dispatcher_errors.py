"""A database error that is not an outage must not take the dispatcher down (issue 11, item 2).

Every loop of the dispatcher runs under :func:`taskflow_common.loops.run_loop`: a pass that
raises anything (a trigger's ``RAISE``, a deadlock Postgres broke) is logged with its class,
counted in ``taskflow_loop_errors_total{loop, error}`` and retried; the process keeps
publishing. Both errors are caused from outside, against a real dispatcher process:

- a trigger the test adds refuses the sweeper's first "mark published" UPDATE
  (``RaiseError``, SQLSTATE P0001): one failed pass of the outbox loop;
- a second connection takes the locks of a success path (task row, then execution row)
  while the reaper abandons the same attempt. With the reaper locking the execution first,
  Postgres finds a deadlock and aborts the reaper's statement; with one lock order (task
  before execution everywhere) the reaper just waits for the task row.
"""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from tests.faults.conftest import MakeStack
from tests.support.faults import executions, statuses
from tests.support.scrape import scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults


def _metrics_url(stack_dispatcher: object) -> str:
    ready = stack_dispatcher.events("service_ready")[-1]  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{ready['metrics_port']}/metrics"


@pytest.mark.service_errors(
    r'"event":"loop_failed".*"error_class":"RaiseError"',
    "the test's trigger makes one outbox pass raise on purpose: the dispatcher logs it",
    service="dispatcher",
)
async def test_a_pass_that_raises_a_database_error_is_survived(make_stack: MakeStack) -> None:
    """The first "mark published" UPDATE raises (a trigger): the dispatcher logs, counts,
    and goes on publishing; a task submitted afterwards completes."""
    stack = await make_stack()
    assert stack.dispatcher is not None
    setup = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        # nextval is not rolled back with the failed transaction: the trigger fires once.
        await setup.execute(
            """
            CREATE SEQUENCE fault_refusals;
            CREATE FUNCTION fault_refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.dispatch_seq <> OLD.dispatch_seq AND NOT NEW.dispatch_pending
                   AND nextval('fault_refusals') = 1 THEN
                    RAISE EXCEPTION 'refused by the test';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fault_refuse_once BEFORE UPDATE ON tasks
                FOR EACH ROW EXECUTE FUNCTION fault_refuse_once();
            """
        )
    finally:
        await setup.close()
    first = await stack.submit("test.sleep", {"sleep_s": 0.05})
    await wait_for(
        lambda: stack.db_value("SELECT is_called FROM fault_refusals"),
        10,
        what="the trigger to refuse a pass",
    )
    second = await stack.submit("test.sleep", {"sleep_s": 0.05})
    for task in (second, first):
        try:
            done = await stack.wait_status(task["id"], timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; dispatcher rc={stack.dispatcher.returncode}") from None
        assert done["status"] == "completed"
    assert stack.dispatcher.running, f"dispatcher exited: {stack.dispatcher.returncode}"
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = await scrape(http, _metrics_url(stack.dispatcher))
    assert metrics.value("taskflow_loop_errors_total", error="RaiseError") == 1
    failed = [e for e in stack.dispatcher.events("loop_failed") if e["error_class"] == "RaiseError"]
    assert len(failed) == 1, failed


async def test_the_reaper_and_a_success_path_lock_in_one_order(make_stack: MakeStack) -> None:
    """A second connection locks the task row, the reaper then abandons the attempt, the
    connection then updates the execution (as a success does): no deadlock, and the
    dispatcher lives on to publish the retry."""
    stack = await make_stack(workers=0)
    assert stack.dispatcher is not None
    task_id = uuid.uuid4()
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        # An attempt whose worker is gone: processing, its lease runs out in 2 s (the
        # reaper trusts leases only 3 s after its start, so it cannot act before).
        await conn.execute(
            """INSERT INTO tasks (id, type, priority, status, attempts, max_attempts,
                                  dispatch_pending, dispatch_seq, dispatched_at, started_at)
               VALUES ($1, 'test.sleep', 'normal', 'processing', 1, 3, false, 1, now(), now());
               """,
            task_id,
        )
        await conn.execute(
            """INSERT INTO task_executions (task_id, attempt, status, worker_id, lease_expires_at)
               VALUES ($1, 1, 'started', 'gone', now() + interval '2 seconds')""",
            task_id,
        )
        tx = conn.transaction()
        await tx.start()
        # The success path's first lock: the task row.
        await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        watcher = await asyncpg.connect(stack.env["DATABASE_URL"])
        try:

            async def reaper_waits() -> bool:
                waiting = await watcher.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock'
                          AND pid <> $1""",
                    conn.get_server_pid(),
                )
                return bool(waiting)

            await wait_for(reaper_waits, 20, what="the reaper to wait on a lock")
        finally:
            await watcher.close()
        # The success path's second lock: the execution row. With the reaper holding it,
        # this is the deadlock (Postgres aborts one of the two after deadlock_timeout).
        try:
            await conn.execute(
                "UPDATE task_executions SET error = 'late' WHERE task_id = $1", task_id
            )
        except asyncpg.DeadlockDetectedError:
            await tx.rollback()
            raise
        await tx.commit()
        try:
            await wait_for(
                lambda: stack.db_value(
                    "SELECT status <> 'processing' FROM tasks WHERE id = $1", task_id
                ),
                10,
                what="the reaper to abandon the attempt",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; dispatcher rc={stack.dispatcher.returncode}") from None
    finally:
        await conn.close()
    await stack.start_worker()
    done = await stack.wait_status(str(task_id), timeout=30)
    assert done["status"] == "completed"
    assert statuses(await executions(stack, str(task_id))) == ["abandoned", "succeeded"]
    assert stack.dispatcher.running, f"dispatcher exited: {stack.dispatcher.returncode}"
    assert not [e for e in stack.dispatcher.events("loop_failed")], "no pass should fail"
