"""The outbox under faults: scenarios 3 and 8 of issue 4.

Each publish of a task carries its own ``Nats-Msg-Id`` (a reused id inside the
server's dedupe window would be dropped silently); a dispatcher that dies between the
PubAck and its bookkeeping causes no second run; a payload larger than the broker's
message limit is no problem because payloads stay in Postgres; and a task submitted
while the task stream is gone waits in Postgres, unpublished, until it is back.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.faults.conftest import MakeStack
from tests.support.faults import executions, jetstream, statuses, stream_info
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.procs import ServiceProcess
from tests.support.timing import floor_plus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

HOLD_LOCK = 4_242_001
"""Advisory lock the test holds to freeze the dispatcher between PubAck and commit."""


def _outbox_failures(dispatcher: ServiceProcess) -> list[dict[str, Any]]:
    """The dispatcher's failed outbox passes (``loop_failed`` of loop ``outbox``)."""
    return [e for e in dispatcher.events("loop_failed") if e.get("loop") == "outbox"]


async def test_a_retry_is_published_under_a_new_message_id_after_its_backoff(
    make_stack: MakeStack,
) -> None:
    """Scenario 3a: one failure, a fixed 2 s backoff: attempt 2 starts 2-3.2 s later.

    (The issue's 5-8 s window at 2/5 scale.) Were the retry published with the first
    attempt's message id, the server would drop it as a duplicate and attempt 2 would
    never come.
    """
    backoff = 2.0
    stack = await make_stack(
        env={"WORKER_BACKOFF_BASE": f"{backoff}s", "WORKER_BACKOFF_MAX": f"{backoff}s"}
    )
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.flaky", {"fail_times": 1})
        done = await stack.wait_status(task["id"], timeout=20)
        assert done["status"] == "completed"
        execs = await executions(stack, task["id"])
        assert statuses(execs) == ["failed", "succeeded"]
        gap = (execs[1]["started"] - execs[0]["finished"]).total_seconds()
        assert backoff <= gap <= floor_plus(backoff, backoff * 0.6), (
            f"attempt 2 started {gap:.2f}s after attempt 1"
        )
        report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
    report.assert_ok()


async def test_dispatcher_killed_after_the_puback_before_recording_it_runs_the_task_once(
    make_stack: MakeStack,
) -> None:
    """Scenario 3b: SIGKILL between the PubAck and the UPDATE that records it.

    A trigger makes the dispatcher's "mark published" UPDATE wait for an advisory lock
    this test holds, so the kill lands exactly in that window: the message is stored in
    the stream, the database still says "not published".
    """
    stack = await make_stack(workers=0)
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
        task = await stack.submit("test.sleep", {"sleep_s": 0.1})

        async def stored_and_held() -> bool:
            info = await stream_info(stack.env)
            waiting = await holder.fetchval(
                """SELECT count(*) FROM pg_locks
                    WHERE locktype = 'advisory' AND objid = $1 AND NOT granted""",
                HOLD_LOCK,
            )
            return info is not None and info.state.messages == 1 and waiting == 1

        await wait_for(stored_and_held, 15, what="the PubAck'd publish to wait on the lock")
        assert stack.dispatcher is not None
        stack.dispatcher.kill()
        await stack.dispatcher.wait(timeout=10)
        await holder.execute("DROP TRIGGER fault_hold_dispatch ON tasks")
        await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_LOCK)
        row = await holder.fetchrow(
            "SELECT dispatch_pending, dispatch_seq, status FROM tasks WHERE id = $1::uuid",
            task["id"],
        )
        assert (row["dispatch_pending"], row["dispatch_seq"], row["status"]) == (
            True,
            0,
            "queued",
        ), "the killed dispatcher's transaction must not have recorded the publish"
    finally:
        await holder.close()

    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        stack.dispatcher = await stack.services.start("dispatcher", stack.env)
        await stack.start_worker()
        done = await stack.wait_status(task["id"], timeout=20)
        assert done["status"] == "completed"
        assert statuses(await executions(stack, task["id"])) == ["succeeded"]
        # The restarted dispatcher re-published under the same Nats-Msg-Id: the server
        # deduplicated it, so the stream only ever stored one message.
        info = await stream_info(stack.env)
        assert info is not None
        assert info.state.last_seq == 1
        report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
    report.assert_ok()


async def test_a_payload_larger_than_the_broker_limit_completes(make_stack: MakeStack) -> None:
    """Scenario 8a: a 1.5 MB payload (NATS refuses messages over 1 MiB)."""
    stack = await make_stack(env={"MAX_BODY_BYTES": str(4 * 1024 * 1024)})
    blob = "x" * (1536 * 1024)
    task = await stack.submit("demo", {"blob": blob})
    done = await stack.wait_status(task["id"], timeout=20)
    assert done["status"] == "completed"
    assert done["result"] == {"blob": blob}
    report = await check_invariants(stack, [task["id"]], deadline_s=10)
    report.assert_ok()


async def test_a_task_waits_unpublished_while_the_stream_is_gone(make_stack: MakeStack) -> None:
    """Scenario 8b: task stream deleted; a new task stays pending until it is back.

    No worker runs while the stream is gone (a worker would recreate it at once), and
    the dispatcher's stream watch runs every 4 s so the window is observable.
    """
    stack = await make_stack(env={"DISPATCHER_STREAM_CHECK_INTERVAL": "4s"})
    warmup = await stack.submit("demo", {"n": 0})
    await stack.wait_status(warmup["id"], timeout=20)
    for proc in list(stack.workers):
        assert await proc.stop(timeout=15) == 0
    assert stack.dispatcher is not None
    failures_before = len(_outbox_failures(stack.dispatcher))
    async with jetstream(stack.env) as js:
        await js.delete_stream(stack.env["NATS_STREAM_NAME"])
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("demo", {"n": 1})
        # Positive signal: the dispatcher tried to publish it and failed.
        await wait_for(
            lambda: len(_outbox_failures(stack.dispatcher)) > failures_before,  # type: ignore[arg-type]
            10,
            what="the dispatcher's failed publish",
        )
        row = await stack.db_rows(
            "SELECT status, dispatch_pending, dispatched_at FROM tasks WHERE id = $1::uuid",
            task["id"],
        )
        stream_meanwhile = await stream_info(stack.env)
        if stream_meanwhile is None:  # the row above was read while the stream was gone
            assert (row[0]["status"], row[0]["dispatch_pending"], row[0]["dispatched_at"]) == (
                "queued",
                True,
                None,
            )
        await wait_for(
            lambda: stream_info(stack.env), 15, what="the dispatcher to recreate the stream"
        )
        await stack.start_worker()
        done = await stack.wait_status(task["id"], timeout=20)
        assert done["status"] == "completed"
        assert statuses(await executions(stack, task["id"])) == ["succeeded"]
        report = await check_invariants(
            stack, [warmup["id"], task["id"]], deadline_s=10, watcher=watcher
        )
    report.assert_ok()
    assert stream_meanwhile is None, "the stream came back too early to observe the wait"
