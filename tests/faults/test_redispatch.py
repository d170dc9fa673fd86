"""Published but unclaimed: re-publish exactly what the stream no longer holds (issue 11).

- item 3: an interrupted attempt whose task was claimed through the "not yet recorded"
  branch (the dispatcher died between the PubAck and its commit) is queued again with no
  record of a publish; when its message is then gone, the task must still be published;
- item 6: a stream lost while the dispatcher is down, and created again by a worker that
  came up first, must be noticed by the dispatcher (its identity is kept in Postgres);
- item 9: a backlog that waits longer than ``DISPATCHER_REDISPATCH_AFTER`` must not be
  published again while its messages are still in the stream; a message the stream lost
  must be found and re-published within seconds, not after that delay.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from taskflow_common.messages import TaskMessage
from tests.faults.conftest import MakeStack
from tests.support.faults import db_now, executions, jetstream, statuses, stream_info
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

HOLD_LOCK = 4_242_011
"""Advisory lock the test holds to freeze the dispatcher between PubAck and commit."""


async def _kill_dispatcher_between_puback_and_commit(stack: Stack, task_type: str) -> str:
    """Submit one task and SIGKILL the dispatcher after its PubAck, before its commit.

    Returns the task id; the task's message is in the stream, its row still says
    "not published" (``dispatch_pending``, ``dispatch_seq`` 0).
    """
    holder = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await holder.execute(
            f"""
            CREATE FUNCTION fault_hold_dispatch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.dispatch_seq <> OLD.dispatch_seq AND NOT NEW.dispatch_pending THEN
                    PERFORM pg_advisory_xact_lock_shared({HOLD_LOCK});
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fault_hold_dispatch BEFORE UPDATE ON tasks
                FOR EACH ROW EXECUTE FUNCTION fault_hold_dispatch();
            """
        )
        await holder.execute("SELECT pg_advisory_lock($1)", HOLD_LOCK)
        task = await stack.submit(task_type, {"sleep_s": 60})

        async def held() -> bool:
            return bool(
                await holder.fetchval(
                    """SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objid = $1 AND NOT granted""",
                    HOLD_LOCK,
                )
            )

        await wait_for(held, 15, what="the PubAck'd publish to wait on the lock")
        assert stack.dispatcher is not None
        stack.dispatcher.kill()
        await stack.dispatcher.wait(timeout=10)
        await holder.execute("DROP TRIGGER fault_hold_dispatch ON tasks")
        await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_LOCK)
    finally:
        await holder.close()
    return str(task["id"])


async def test_an_interrupted_attempt_claimed_before_its_publish_was_recorded_runs_again(
    make_stack: MakeStack,
) -> None:
    """Item 3: crash between PubAck and commit, a claim through the pending branch, a
    SIGTERM past the grace (interrupted: queued), then the message is gone (stream purged
    while no worker holds it): the task must be published and claimed again."""
    stack = await make_stack(workers=0, env={"DISPATCHER_REDISPATCH_AFTER": "2s"})
    task_id = await _kill_dispatcher_between_puback_and_commit(stack, "test.sleep")
    worker = await stack.start_worker({"WORKER_SHUTDOWN_GRACE": "1s"})
    await stack.wait_status(task_id, {"processing"}, timeout=15)
    stack.dispatcher = await stack.services.start("dispatcher", stack.env)
    worker.terminate()
    assert await worker.wait(timeout=15) == 0
    assert statuses(await executions(stack, task_id)) == ["interrupted"]
    row = await stack.db_rows(
        "SELECT status, dispatch_pending, dispatched_at FROM tasks WHERE id = $1::uuid", task_id
    )
    assert (row[0]["status"], row[0]["dispatch_pending"]) == ("queued", False)
    async with jetstream(stack.env) as js:
        await js.purge_stream(stack.env["NATS_STREAM_NAME"])  # the nak'd message is gone
    await stack.start_worker()

    async def second_attempt() -> bool:
        return len(await executions(stack, task_id)) == 2

    try:
        await wait_for(second_attempt, 20, what="a second attempt")
    except AssertionError as exc:
        task = await stack.get(task_id)
        raise AssertionError(f"{exc}; task stays {task['status']}") from None
    assert statuses(await executions(stack, task_id))[0] == "interrupted"


async def test_a_stream_lost_while_the_dispatcher_is_down_is_reswept(
    make_stack: MakeStack,
) -> None:
    """Item 6: tasks published, dispatcher stopped, the stream deleted, a worker starts
    first (it creates the stream again), then the dispatcher: every task completes."""
    stack = await make_stack(workers=0)
    tasks = [await stack.submit("test.sleep", {"sleep_s": 0.05}) for _ in range(3)]
    ids = [t["id"] for t in tasks]

    async def published() -> bool:
        info = await stream_info(stack.env)
        return info is not None and info.state.messages == len(ids)

    await wait_for(published, 15, what="the tasks to be published")
    assert stack.dispatcher is not None
    assert await stack.dispatcher.stop(timeout=15) == 0
    async with jetstream(stack.env) as js:
        await js.delete_stream(stack.env["NATS_STREAM_NAME"])
    await stack.start_worker()
    await wait_for(lambda: stream_info(stack.env), 10, what="the worker to create the stream")
    stack.dispatcher = await stack.services.start("dispatcher", stack.env)
    try:
        done = await stack.wait_all(ids, timeout=20)
    except AssertionError as exc:
        left = await stack.db_value(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'queued'", ids
        )
        raise AssertionError(f"{exc}; {left} of {len(ids)} still queued") from None
    assert [t["status"] for t in done] == ["completed"] * len(ids)


async def test_a_backlog_older_than_redispatch_after_is_not_published_again(
    make_stack: MakeStack,
) -> None:
    """Item 9: with no worker, 20 tasks wait three times DISPATCHER_REDISPATCH_AFTER
    (1 s here): their messages are still in the stream, so none is published again; then
    one message is deleted from the stream, and that task alone is published again."""
    stack = await make_stack(workers=0, env={"DISPATCHER_REDISPATCH_AFTER": "1s"})
    tasks = await asyncio.gather(
        *(stack.submit("test.sleep", {"sleep_s": 0.05}) for _ in range(20))
    )
    ids = [t["id"] for t in tasks]

    async def all_published() -> bool:
        return bool(
            await stack.db_value(
                "SELECT count(*) = $2 FROM tasks WHERE id = ANY($1::uuid[])"
                " AND NOT dispatch_pending AND dispatch_seq >= 1",
                ids,
                len(ids),
            )
        )

    await wait_for(all_published, 15, what="the backlog to be published")
    since = await db_now(stack)

    async def waited() -> bool:
        return (await db_now(stack) - since).total_seconds() >= 3.0

    await wait_for(waited, 10, interval=0.2, what="three redispatch periods to pass")
    info = await stream_info(stack.env)
    assert info is not None
    assert info.state.last_seq == len(ids), "messages still in the stream were published again"
    seqs = await stack.db_value(
        "SELECT array_agg(DISTINCT dispatch_seq) FROM tasks WHERE id = ANY($1::uuid[])", ids
    )
    assert seqs == [1]

    # One message lost (as JetStream may after a crash): only that task is published again.
    async with jetstream(stack.env) as js:
        lost = TaskMessage.decode((await js.get_msg(stack.env["NATS_STREAM_NAME"], 7)).data)
        await js.delete_msg(stack.env["NATS_STREAM_NAME"], 7)
    lost_id = str(lost.task_id)

    async def republished() -> bool:
        info = await stream_info(stack.env)
        return info is not None and info.state.last_seq == len(ids) + 1

    await wait_for(republished, 10, what="the lost message to be published again")
    await stack.start_worker()
    done = await stack.wait_all(ids, timeout=20)
    assert [t["status"] for t in done] == ["completed"] * len(ids)
    for t in ids:
        assert statuses(await executions(stack, t)) == ["succeeded"], t
    lost_seq = await stack.db_value("SELECT dispatch_seq FROM tasks WHERE id = $1::uuid", lost_id)
    info = await stream_info(stack.env)
    assert info is not None
    assert info.state.last_seq == len(ids) + 1
    assert lost_seq == 2
