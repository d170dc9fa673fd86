"""A handler that kills its own worker: scenario 11 of issue 4.

Under a supervisor that restarts the worker on every exit, the poison task must run
exactly ``max_attempts`` times (each crash is an abandoned, counted attempt), end
dead-lettered, and not take the other tasks down with it.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import MakeStack
from tests.support.faults import Supervisor, executions, statuses
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults


@pytest.mark.service_exits(
    "test.crash makes its worker SIGKILL itself; the test asserts supervisor.exits",
    service="worker",
)
async def test_a_crash_looping_task_runs_max_attempts_times_and_is_dead_lettered(
    make_stack: MakeStack,
) -> None:
    """Scenario 11: test.crash with max_attempts 3 plus 10 normal tasks, supervised worker."""
    stack = await make_stack(workers=0, env={"WORKER_ACK_WAIT": "2s"})
    supervisor = Supervisor(stack, {"WORKER_CONCURRENCY": "2"}, max_restarts=8)
    await supervisor.start()
    try:
        async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:
            poison = await stack.submit("test.crash", {}, max_attempts=3)
            # The innocent tasks get a budget of 10: one whose slot-mate is the crashing
            # task dies with the worker each time (counted, as any killed worker's attempt
            # is), and its retry may be fetched beside the poison's retry again.
            others = await asyncio.gather(
                *(stack.submit("test.sleep", {"sleep_s": 0.1}, max_attempts=10) for _ in range(10))
            )
            ids = [poison["id"], *(t["id"] for t in others)]
            done = await stack.wait_status(poison["id"], timeout=60)
            assert done["status"] == "failed"
            execs = await executions(stack, poison["id"])
            assert statuses(execs) == ["abandoned"] * 3
            assert all(e["error"] for e in execs)
            await stack.wait_all(ids, timeout=30)
            for t in others:
                assert (await stack.get(t["id"]))["status"] == "completed"

            async def listed() -> bool:
                letters = await stack.dead_letters()
                return any(d["task_id"] == poison["id"] for d in letters)

            await wait_for(listed, 15, what="the poison task's dead letter")
            report = await check_invariants(stack, ids, deadline_s=15, watcher=watcher)
        report.assert_ok()
        assert report.dead_letters == 1
        # Three crashes, each answered by a restart (SIGKILL: exit -9).
        assert supervisor.exits[:3] == [-9, -9, -9]
    finally:
        await supervisor.stop()
