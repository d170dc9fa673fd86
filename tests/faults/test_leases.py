"""Leases and ack deadlines: scenarios 1, 2, 10 and 12 of issue 4.

Long handlers must not be redelivered while alive, no message may wait in a local
buffer past its ack deadline, a crashed worker's attempt is taken over (and recorded
as abandoned), and a handler that blocks its event loop for exactly ``ack_wait`` (so its
completion races the redelivery) never produces two overlapping runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    ACK_WAIT_S,
    BACKOFF_BASE_S,
    CUT_POSTGRES,
    MakeStack,
    worker_of,
)
from tests.support.faults import consumer_info, db_now, executions, statuses, stream_info
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.procs import ServiceFactory
from tests.support.tcpproxy import TcpProxy
from tests.support.timing import floor_plus
from tests.support.traces import overlapping, runs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults


async def test_long_handler_runs_once_and_a_changed_ack_wait_is_applied(
    make_stack: MakeStack,
) -> None:
    """Scenario 1: a handler 1.5x ack_wait, two workers; then ack_wait doubled."""
    stack = await make_stack(workers=2)
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.sleep", {"sleep_s": ACK_WAIT_S * 1.5})
        done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 1.5 + 15)
        assert done["status"] == "completed"
        assert statuses(await executions(stack, task["id"])) == ["succeeded"]
        normal = await consumer_info(stack.env, "normal")
        assert normal.num_redelivered == 0
        report = await check_invariants(stack, [task["id"]], deadline_s=10, watcher=watcher)
    report.assert_ok()

    # Change WORKER_ACK_WAIT and restart the workers: the consumers follow the config.
    for proc in list(stack.workers):
        assert await proc.stop(timeout=15) == 0
    await stack.start_worker({"WORKER_ACK_WAIT": f"{ACK_WAIT_S * 2}s"})
    info = stack.js_info()
    consumers = {c["name"]: c for c in info["consumers"]}
    for p in ("high", "normal", "low"):
        config = consumers[f"{stack.env['NATS_CONSUMER_NAME']}-{p}"]["config"]
        assert config["ack_wait"] == ACK_WAIT_S * 2


async def test_a_burst_never_waits_in_a_local_buffer_past_its_ack_deadline(
    make_stack: MakeStack,
) -> None:
    """Scenario 2: ten tasks of ack_wait/6 at once, two workers of concurrency 1.

    One greedy worker buffering all ten would hold the last for 10 x 0.5 s = 5 s, past
    the 3 s ack wait, and it would be redelivered to the other worker.
    """
    stack = await make_stack(workers=2, worker_env={"WORKER_CONCURRENCY": "1"})
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        tasks = await asyncio.gather(
            *(stack.submit("test.sleep", {"sleep_s": ACK_WAIT_S / 6}) for _ in range(10))
        )
        ids = [t["id"] for t in tasks]
        await stack.wait_all(ids, timeout=30)
        for tid in ids:
            assert statuses(await executions(stack, tid)) == ["succeeded"]
        normal = await consumer_info(stack.env, "normal")
        assert normal.num_redelivered == 0
        report = await check_invariants(stack, ids, deadline_s=10, watcher=watcher)
    report.assert_ok()


async def test_sigkill_mid_task_is_taken_over_within_ack_wait_plus_backoff(
    make_stack: MakeStack,
) -> None:
    """Scenario 10: SIGKILL of the worker running a task (two workers)."""
    stack = await make_stack(workers=2)
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.sleep", {"sleep_s": ACK_WAIT_S * 1.2})
        await stack.wait_status(task["id"], {"processing"}, timeout=15)
        # While the attempt runs its message is ack-pending, not acked at start.
        normal = await consumer_info(stack.env, "normal")
        assert normal.num_ack_pending == 1
        stream = await stream_info(stack.env)
        assert stream is not None
        assert stream.state.messages == 1
        first = (await executions(stack, task["id"]))[0]
        victim = worker_of(stack, first["worker_id"])
        victim.kill()
        await victim.wait(timeout=10)
        killed_at = await db_now(stack)

        async def second_started() -> bool:
            return len(await stack.executions(task["id"])) >= 2

        await wait_for(second_started, ACK_WAIT_S * 3 + 10, what="attempt 2 to start")
        done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 1.2 + 15)
        assert done["status"] == "completed"
        execs = await executions(stack, task["id"])
        assert statuses(execs) == ["abandoned", "succeeded"]
        assert execs[0]["error"]
        # ack_wait (lease) + first backoff (at most 1.5 x base) + 2 s of scheduling slack
        # (the 5 s, scaled; the reaper runs every 200 ms), times SLACK.
        budget = floor_plus(ACK_WAIT_S + BACKOFF_BASE_S * 1.5, 2.0)
        took = (execs[1]["started"] - killed_at).total_seconds()
        assert took <= budget, f"attempt 2 started {took:.2f}s after the kill (> {budget}s)"
        report = await check_invariants(stack, [task["id"]], deadline_s=15, watcher=watcher)
    report.assert_ok()


@pytest.mark.service_errors(
    r'"event":"handle_failed".*DeadlockDetectedError',
    "KNOWN ISSUE, not by design: two workers taking over each other's expired leases can "
    "deadlock in Postgres (seen once in 3 runs); the worker naks and the redelivery "
    "completes the task, and the invariants hold. Remove once the lock order is fixed.",
    service="worker",
)
@pytest.mark.parametrize("run", [1, 2, 3])
async def test_handlers_blocking_for_exactly_ack_wait_never_overlap(
    make_stack: MakeStack, run: int
) -> None:
    """Scenario 12: tasks that block the event loop for exactly ack_wait, 5 workers.

    Completion and redelivery race; at most one run may count and runs may only overlap
    when the earlier one's lease had expired (I2), versions only grow (I6). Scaled to
    ack_wait 1 s (the minimum) and 20 tasks per run.
    """
    ack_wait = 1.0
    stack = await make_stack(
        workers=5,
        env={"WORKER_ACK_WAIT": f"{ack_wait}s", "WORKER_BACKOFF_BASE": "200ms"},
        worker_env={"WORKER_CONCURRENCY": "1"},
        dlq=True,
    )
    async with VersionWatcher(stack.env["DATABASE_URL"], interval_s=0.1) as watcher:
        tasks = await asyncio.gather(
            *(stack.submit("test.block", {"sleep_s": ack_wait}) for _ in range(20))
        )
        ids = [t["id"] for t in tasks]
        report = await check_invariants(stack, ids, deadline_s=60, watcher=watcher)
    print(report.describe(), f"executions={report.executions}")
    report.assert_ok()
    assert report.duplicates == 0


@CUT_POSTGRES
async def test_a_worker_that_cannot_renew_its_lease_stops_its_handler(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Issue 11 item 4: only this worker loses Postgres (a cut proxy) while its handler runs.

    The dispatcher's reaper and a second worker keep Postgres: the attempt's lease runs
    out, the reaper abandons it and the second worker runs the retry. The first worker
    must stop its handler before its lease ends, so the two runs never overlap.
    """
    trace = tmp_path / "trace.jsonl"
    stack = await make_stack(workers=0)
    async with TcpProxy.for_url(stack.env["DATABASE_URL"]) as proxy:
        cut_off = await stack.start_worker(
            {
                "WORKER_ID": "worker-cut",
                "DATABASE_URL": proxy.url(stack.env["DATABASE_URL"]),
                "WORKER_CONCURRENCY": "1",
            }
        )
        async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
            task = await stack.submit(
                "test.trace", {"sleep_s": ACK_WAIT_S * 3, "trace": str(trace)}
            )
            await stack.wait_status(task["id"], {"processing"}, timeout=15)
            await stack.start_worker({"WORKER_ID": "worker-ok"})
            proxy.cut()
            try:
                done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 6 + 15)
            finally:
                proxy.restore()
            assert done["status"] == "completed", done
            found = runs(trace, task["id"])
            assert [(r.worker, r.how) for r in found] == [
                ("worker-cut", "cancelled"),
                ("worker-ok", "returned"),
            ], found
            assert overlapping(found, time.time()) == [], found
            execs = await executions(stack, task["id"])
            assert statuses(execs) == ["abandoned", "succeeded"], execs
            report = await check_invariants(stack, [task["id"]], deadline_s=15, watcher=watcher)
        report.assert_ok()
        assert cut_off.events("lease_not_renewed")


@CUT_POSTGRES
async def test_an_outage_longer_than_the_lease_does_not_use_up_an_attempt(
    make_stack: MakeStack, services: ServiceFactory
) -> None:
    """Issue 11 review, item 2: worker A and the dispatcher lose Postgres for > a lease.

    A is cut from NATS too, so its message is redelivered to worker B, which keeps both
    servers. Once A's lease has expired, B must not abandon A's attempt (counted: with
    ``max_attempts=1`` the task would fail although A's handler succeeded): after an
    outage only the reaper, which knows Postgres was away (LeaseTrust), decides. A is
    restored two thirds of a lease after its lease ended; its success must be recorded.
    """
    stack = await make_stack(workers=0)
    real_db = stack.env["DATABASE_URL"]
    async with (
        TcpProxy.for_url(real_db) as pg_a,
        TcpProxy.for_url(stack.env["NATS_URL"]) as nats_a,
        TcpProxy.for_url(real_db) as pg_dispatcher,
    ):
        assert stack.dispatcher is not None
        assert await stack.dispatcher.stop(timeout=15) == 0
        stack.dispatcher = await services.start(
            "dispatcher", stack.env | {"DATABASE_URL": pg_dispatcher.url(real_db)}
        )
        await stack.start_worker(
            {
                "WORKER_ID": "worker-a",
                "DATABASE_URL": pg_a.url(real_db),
                "NATS_URL": nats_a.url(stack.env["NATS_URL"]),
            }
        )
        task = await stack.submit("test.sleep", {"sleep_s": 1.0}, max_attempts=1)
        await stack.wait_status(task["id"], {"processing"}, timeout=15)
        await stack.start_worker({"WORKER_ID": "worker-b"})
        for proxy in (pg_a, nats_a, pg_dispatcher):
            proxy.cut()
        try:

            async def lease_past() -> bool:
                return bool(
                    await stack.db_value(
                        "SELECT now() > lease_expires_at + make_interval(secs => $2)"
                        " FROM task_executions WHERE task_id = $1::uuid AND attempt = 1",
                        task["id"],
                        ACK_WAIT_S * 2 / 3,
                    )
                )

            await wait_for(lease_past, ACK_WAIT_S * 3 + 10, interval=0.05, what="lease end")
        finally:
            for proxy in (pg_a, nats_a, pg_dispatcher):
                proxy.restore()
        done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 4 + 15)
        assert done["status"] == "completed", done
        assert statuses(await executions(stack, task["id"])) == ["succeeded"]
        assert await stack.dead_letters() == []
