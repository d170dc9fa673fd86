"""Error paths after the handler returned: scenario 7 of issue 4.

With ``max_ack_pending`` 20, a single unsettled message per failure would stall the
consumer after 20 of them: 25 tasks whose result cannot be stored must each settle
their message, so the 10 normal tasks submitted after them still run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.faults.conftest import ACK_WAIT_S, MAX_ATTEMPTS, MakeStack
from tests.support.faults import consumer_info, executions, statuses
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.scrape import scrape
from tests.support.traces import runs

pytestmark = pytest.mark.faults


# Three ways an attempt can fail after its handler returned or raised; each must settle.
# kind -> (words of the recorded error, executions): results that cannot be stored fail
# for good at once; a handler error is retried up to WORKER_MAX_ATTEMPTS (3).
BAD_KINDS = {
    "test.unserializable": ("not JSON-serialisable", 1),  # orjson refuses the result
    "test.unstorable": ("result cannot be stored", 1),  # jsonb refuses the result
    "test.nul_error": ("bad byte", MAX_ATTEMPTS),  # text refuses the error message
}


async def test_unstorable_outcomes_fail_clearly_and_settle_their_messages(
    make_stack: MakeStack,
) -> None:
    """Scenario 7: 25 outcomes that cannot be stored as is, then 10 normal tasks.

    With ``max_ack_pending`` 20 a leaked message per failure would stop the consumer
    before the normal tasks; all 25 must fail with a clear error and dead letter.
    """
    stack = await make_stack(workers=1, env={"WORKER_MAX_ACK_PENDING": "20"})
    kinds = [list(BAD_KINDS)[i % len(BAD_KINDS)] for i in range(25)]
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        bad = await asyncio.gather(*(stack.submit(kind, {}) for kind in kinds))
        bad_ids = [t["id"] for t in bad]
        await stack.wait_all(bad_ids, timeout=30)
        good = await asyncio.gather(
            *(stack.submit("test.sleep", {"sleep_s": 0.05}) for _ in range(10))
        )
        good_ids = [t["id"] for t in good]
        await stack.wait_all(good_ids, timeout=30)
        for tid, kind in zip(bad_ids, kinds, strict=True):
            task = await stack.get(tid)
            assert task["status"] == "failed", (kind, task)
            words, runs = BAD_KINDS[kind]
            assert words in task["last_error"], (kind, task["last_error"])
            assert statuses(await executions(stack, tid)) == ["failed"] * runs, kind
        for tid in good_ids:
            assert (await stack.get(tid))["status"] == "completed"
        report = await check_invariants(stack, bad_ids + good_ids, deadline_s=20, watcher=watcher)
    report.assert_ok()
    assert report.dead_letters == 25
    normal = await consumer_info(stack.env, "normal")
    assert (normal.num_ack_pending, normal.num_pending, normal.num_redelivered) == (0, 0, 0)


@pytest.mark.service_errors(
    r'"event":"(loop_failed|completion_write_failed)".*RaiseError',
    "the test's trigger refuses the first completion on purpose: the worker logs that write",
    service="worker",
)
async def test_a_database_error_in_one_pass_is_survived_and_the_result_kept(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Issue 11 item 2 (the worker's part): one pass of a loop raises a non-outage error.

    A trigger makes Postgres refuse the first completion with ``RAISE EXCEPTION`` (as a
    deadlock, a bug hit by one odd row or a failed constraint would). The worker must
    survive it as every loop does: logged with its class, backed off, counted in
    ``taskflow_loop_errors_total``, tried again; the handler's success is kept (one
    run, one succeeded attempt) and the worker goes on processing.
    """
    trace = tmp_path / "trace.jsonl"
    stack = await make_stack(workers=1)
    worker = stack.workers[0]
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await conn.execute(
            """
            CREATE SEQUENCE fault_once;
            CREATE FUNCTION fault_refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- nextval is not rolled back with the refused statement: refuse once.
                IF NEW.status = 'completed' AND nextval('fault_once') = 1 THEN
                    RAISE EXCEPTION 'injected fault: completion refused once';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fault_refuse_once BEFORE UPDATE ON tasks
                FOR EACH ROW EXECUTE FUNCTION fault_refuse_once();
            """
        )
    finally:
        await conn.close()
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        task = await stack.submit("test.trace", {"sleep_s": 0.1, "trace": str(trace)})
        done = await stack.wait_status(task["id"], timeout=ACK_WAIT_S * 3 + 10)
        assert done["status"] == "completed", done
        assert statuses(await executions(stack, task["id"])) == ["succeeded"]
        assert [r.how for r in runs(trace)] == ["returned"]
        after = await stack.submit("demo", {"n": 1})
        assert (await stack.wait_status(after["id"], timeout=15))["status"] == "completed"
        report = await check_invariants(
            stack, [task["id"], after["id"]], deadline_s=10, watcher=watcher
        )
    report.assert_ok()
    assert worker.running
    port = worker.events("service_ready")[-1]["metrics_port"]
    metrics = await scrape(stack.http, f"http://127.0.0.1:{port}/metrics")
    assert metrics.value("taskflow_loop_errors_total", error="RaiseError") == 1
