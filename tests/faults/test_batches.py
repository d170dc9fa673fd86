"""Batched claims and completions (issue 5): one bad result must not sink its batch.

The worker claims every delivery of a fetch in one statement and records the successes
of the moment in one statement. Postgres refuses a whole statement when it refuses one
row, so a result that cannot be stored, in a batch with good ones, must fail only its
own task: the others complete once, and every message is settled.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import MakeStack
from tests.support.faults import consumer_info, executions, statuses, stream_info
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults


async def test_an_unstorable_result_fails_alone_inside_a_full_batch(make_stack: MakeStack) -> None:
    """30 tasks already on JetStream (every 5th unstorable), then one worker drains them."""
    stack = await make_stack(workers=1)
    worker = stack.workers[0]
    worker.terminate()  # the consumers exist; now let a backlog build up
    assert await worker.wait(timeout=20) == 0
    kinds = ["test.unstorable" if i % 5 == 2 else "demo" for i in range(30)]
    async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
        tasks = await asyncio.gather(
            *(stack.submit(kind, {"i": i}) for i, kind in enumerate(kinds))
        )
        ids = [t["id"] for t in tasks]

        async def published() -> bool:
            info = await stream_info(stack.env)
            return info is not None and info.state.messages == len(ids)

        await wait_for(published, 20, what="the backlog on JetStream")
        await stack.start_worker()
        await stack.wait_all(ids, timeout=30)
        for tid, kind, sent in zip(ids, kinds, tasks, strict=True):
            task = await stack.get(tid)
            if kind == "demo":
                assert (task["status"], task["result"]) == ("completed", sent["payload"]), task
                assert statuses(await executions(stack, tid)) == ["succeeded"]
            else:
                assert task["status"] == "failed", task
                assert "result cannot be stored" in task["last_error"], task
                assert statuses(await executions(stack, tid)) == ["failed"]
        report = await check_invariants(stack, ids, deadline_s=20, watcher=watcher)
    report.assert_ok()
    assert report.dead_letters == kinds.count("test.unstorable")
    normal = await consumer_info(stack.env, "normal")
    assert (normal.num_ack_pending, normal.num_pending, normal.num_redelivered) == (0, 0, 0)
