"""Claims refused or revoked: a phantom claim (issue 11 item 5), a late cancel (item 8).

A claim can commit in Postgres while its worker sees an error (the case
:func:`~taskflow_common.store.claims.adopt` exists for): the worker naks, and a second
worker that receives the redelivery finds the attempt "owned elsewhere" by a live lease
that nobody runs. The message must outlive that phantom claim, so that its owner can
adopt it when it comes back.

A cancel request is a core NATS message that every worker hears; one that arrives late,
after the task was cancelled, retried and claimed again, must not stop the new attempt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import nats
import pytest

from tests.faults.conftest import ACK_WAIT_S, CUT_POSTGRES, MakeStack
from tests.support.faults import executions, statuses
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.stack import Stack
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

HOLD_CLAIM = 4_242_011


@asynccontextmanager
async def held_claims(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """Make every claim wait on an advisory lock the yielded connection holds.

    ``SELECT pg_advisory_unlock(HOLD_CLAIM)`` on it lets the waiting claims commit.
    """
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
        yield holder
        await holder.execute("DROP TRIGGER fault_hold_claim ON tasks")
    finally:
        await holder.close()


@CUT_POSTGRES
async def test_an_owned_elsewhere_delivery_outlives_the_phantom_claim(
    make_stack: MakeStack,
) -> None:
    """Issue 11 item 5: worker-b must not ack the message of worker-a's phantom claim.

    worker-a's claim waits on a lock; its connection to Postgres is cut (a proxy), so it
    sees an outage and naks; then the claim commits: attempt 1 is open, owned by
    worker-a, run by nobody. worker-b gets the redelivery (worker-a cannot claim
    meanwhile) and finds it owned elsewhere; then worker-b stops and worker-a's
    Postgres comes back. The message must come back to worker-a, which adopts and runs
    the attempt. ``max_attempts=1``; the reaper is slowed (30 s) so that it does not
    race the adoption, as with the default 1 s interval and a 30 s lease it may not.
    """
    stack = await make_stack(
        workers=0, env={"WORKER_MAX_ATTEMPTS": "1", "DISPATCHER_REAP_INTERVAL": "30s"}
    )
    async with TcpProxy.for_url(stack.env["DATABASE_URL"]) as proxy:
        owner = await stack.start_worker(
            {"WORKER_ID": "worker-a", "DATABASE_URL": proxy.url(stack.env["DATABASE_URL"])}
        )
        async with (
            held_claims(stack) as holder,
            VersionWatcher(stack.env["DATABASE_URL"]) as watcher,
        ):
            task = await stack.submit("test.sleep", {"sleep_s": 0.2})

            async def claim_waiting() -> bool:
                n = await holder.fetchval(
                    """SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objid = $1 AND NOT granted""",
                    HOLD_CLAIM,
                )
                return bool(n == 1)

            await wait_for(claim_waiting, 15, what="worker-a's claim to wait on the lock")
            proxy.cut()
            await wait_for(lambda: owner.events("claim_unavailable"), 15, what="claim error")
            await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_CLAIM)

            async def phantom() -> bool:
                row = await stack.db_rows(
                    "SELECT worker_id, status FROM task_executions WHERE task_id = $1",
                    task["id"],
                )
                return [tuple(r) for r in row] == [("worker-a", "started")]

            await wait_for(phantom, 15, what="worker-a's claim to commit unseen")
            other = await stack.start_worker({"WORKER_ID": "worker-b", "LOG_LEVEL": "DEBUG"})

            def skipped() -> bool:
                return any(
                    e.get("verdict") == "owned_elsewhere" for e in other.events("delivery_skipped")
                )

            await wait_for(skipped, ACK_WAIT_S * 3, what="worker-b to find it owned elsewhere")
            assert await other.stop(timeout=15) == 0
            proxy.restore()
            done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 4 + 10)
            assert done["status"] == "completed", done
            # Adopted when the message comes back first, else given back (not counted) by
            # worker-a's next lease beat (review item 3).
            assert statuses(await executions(stack, task["id"])) in (
                ["succeeded"],
                ["interrupted", "succeeded"],
            )
            assert owner.events("claim_adopted") or owner.events("claim_given_back")
            report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
        report.assert_ok()
        assert report.dead_letters == 0


@CUT_POSTGRES
async def test_a_phantom_claim_is_settled_by_its_worker_before_the_reaper_sees_it(
    make_stack: MakeStack,
) -> None:
    """Issue 11 review, item 3: the phantom claim of the test above, nobody slowed down.

    worker-b stays up and the reaper runs at its usual interval. Once worker-a's
    Postgres is back (before the phantom's lease ends), worker-a must settle its
    uncertain claim itself (adopt, or give it back uncounted): the task completes with
    ``max_attempts=1`` and no counted failure. worker-a is cut from NATS once it has
    nak'd, so the redelivery goes to worker-b (nak'd past the lease). The lease is 6 s
    (the suite's 3 s doubled) so that worker-b's start fits into it.
    """
    lease_s = ACK_WAIT_S * 2
    stack = await make_stack(
        workers=0, env={"WORKER_MAX_ATTEMPTS": "1", "WORKER_ACK_WAIT": f"{lease_s}s"}
    )
    async with (
        TcpProxy.for_url(stack.env["DATABASE_URL"]) as proxy,
        TcpProxy.for_url(stack.env["NATS_URL"]) as nats_proxy,
    ):
        owner = await stack.start_worker(
            {
                "WORKER_ID": "worker-a",
                "DATABASE_URL": proxy.url(stack.env["DATABASE_URL"]),
                "NATS_URL": nats_proxy.url(stack.env["NATS_URL"]),
            }
        )
        async with held_claims(stack) as holder:
            task = await stack.submit("test.sleep", {"sleep_s": 0.2})

            async def claim_waiting() -> bool:
                n = await holder.fetchval(
                    """SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objid = $1 AND NOT granted""",
                    HOLD_CLAIM,
                )
                return bool(n == 1)

            await wait_for(claim_waiting, 15, what="worker-a's claim to wait on the lock")
            other = await stack.start_worker({"WORKER_ID": "worker-b", "LOG_LEVEL": "DEBUG"})
            proxy.cut()
            await wait_for(lambda: owner.events("claim_unavailable"), 15, what="claim error")

            # worker-a's nak follows that log line at once; cut off from NATS too, it
            # cannot fetch the message again: the redelivery goes to worker-b.
            nats_proxy.cut()
            await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_CLAIM)

            async def phantom() -> bool:
                row = await stack.db_rows(
                    "SELECT worker_id, status FROM task_executions WHERE task_id = $1",
                    task["id"],
                )
                return [tuple(r) for r in row] == [("worker-a", "started")]

            await wait_for(phantom, 15, what="worker-a's claim to commit unseen")

            def skipped() -> bool:
                return any(
                    e.get("verdict") == "owned_elsewhere" for e in other.events("delivery_skipped")
                )

            # worker-b holds the message (nak'd past the lease): it cannot come back to
            # worker-a before the lease ends.
            await wait_for(skipped, lease_s, what="worker-b to find it owned elsewhere")
            proxy.restore()
            nats_proxy.restore()
            done = await stack.wait_status(task["id"], timeout=lease_s * 3 + 10)
            assert done["status"] == "completed", done
            assert statuses(await executions(stack, task["id"]))[-1] == "succeeded"
            failed = await stack.db_value(
                "SELECT failed_attempts FROM tasks WHERE id = $1::uuid", task["id"]
            )
            assert failed == 0
            assert await stack.dead_letters() == []
            assert other.running


async def test_a_late_cancel_request_does_not_stop_the_next_attempt(make_stack: MakeStack) -> None:
    """Issue 11 item 8: cancel -> retry -> a new claim, then the first cancel's message.

    The late message names attempt 1 (as the API sends it once fenced by attempt); the
    worker must leave attempt 2 running, and the task completes.
    """
    stack = await make_stack(workers=1)
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.sleep", {"sleep_s": ACK_WAIT_S})
        tid = task["id"]
        await stack.wait_status(tid, {"processing"}, timeout=15)
        resp = await stack.http.post(f"{stack.api_url}/tasks/{tid}/cancel")
        assert resp.status_code == 200, resp.text
        resp = await stack.http.post(f"{stack.api_url}/tasks/{tid}/retry")
        assert resp.status_code == 200, resp.text

        async def second_attempt() -> bool:
            t = await stack.get(tid)
            return bool(t["status"] == "processing" and t["attempts"] == 2)

        await wait_for(second_attempt, 15, what="attempt 2 to run")
        subject = f"{stack.env['NATS_SUBJECT_PREFIX']}.control.cancel"
        nc = await nats.connect(stack.env["NATS_URL"])
        try:
            await nc.publish(subject, json.dumps({"task_id": tid, "attempt": 1}).encode())
            await nc.flush()
        finally:
            await nc.close()
        done = await stack.wait_status(tid, timeout=ACK_WAIT_S * 3 + 10)
        assert done["status"] == "completed", done
        assert statuses(await executions(stack, tid)) == ["cancelled", "succeeded"]
        report = await check_invariants(stack, [tid], deadline_s=10, watcher=watcher)
    report.assert_ok()
