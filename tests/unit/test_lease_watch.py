"""The worker's lease watch (pure logic, no servers): when it stops an unrenewed attempt.

The watch stops a handler whose lease this worker could not renew; the handler then has
:attr:`~taskflow_worker.attempt.AttemptRunner.stuck_s` seconds to unwind. Both must fit
in the lease, or the reaper abandons the attempt and another worker runs the retry while
the handler is still unwinding here (review of issue 11, item 1). Healthy renewals (one
per beat, ``ack_wait / 3``) must never trip it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from taskflow_common.db import Database
from taskflow_common.store.claims import Claim
from taskflow_worker.attempt import AttemptRunner
from taskflow_worker.completions import Completions
from taskflow_worker.handlers import TaskContext, handler
from taskflow_worker.heartbeat import Heartbeat
from taskflow_worker.metrics import WorkerMetrics
from taskflow_worker.running import Running, RunningAttempts
from taskflow_worker.settings import WorkerSettings

ACK_WAITS = [3.0, 10.0, 30.0, 300.0]


def claim(type: str = "sleep", timeout_s: float | None = None) -> Claim:
    return Claim(
        task_id=uuid.uuid4(),
        attempt=1,
        execution_id=uuid.uuid4(),
        type=type,
        payload={},
        priority="normal",
        timeout_s=timeout_s,
        max_attempts=3,
        failed_attempts=0,
        trace_parent=None,
    )


def runner(ack_wait: float) -> AttemptRunner:
    settings = WorkerSettings.model_validate({"WORKER_ACK_WAIT": ack_wait})
    none: Any = None
    return AttemptRunner(
        settings,
        cast(Database, none),
        cast(WorkerMetrics, none),
        cast(Completions, none),
        RunningAttempts(),
    )


def heartbeat(running: RunningAttempts, ack_wait: float) -> Heartbeat:
    """Built as :class:`~taskflow_worker.worker.Worker` builds it."""
    none: Any = None
    return Heartbeat(
        cast(Database, none), running, lease_s=ack_wait, interval_s=max(0.2, ack_wait / 3)
    )


async def stopped_after(ack_wait: float, unrenewed_s: float) -> bool:
    """Whether one pass of the watch stops an attempt unrenewed for ``unrenewed_s`` s."""
    running = RunningAttempts()
    r = Running(claim(), cast(Msg, None))
    r.task = asyncio.ensure_future(asyncio.sleep(3600))
    r.lease_from = time.monotonic() - unrenewed_s
    running.add(r)
    try:
        await heartbeat(running, ack_wait)._lease_watch()
        return r.stop_reason == "lease_unrenewed"
    finally:
        r.task.cancel()
        await asyncio.gather(r.task, return_exceptions=True)


@pytest.mark.parametrize("ack_wait", ACK_WAITS)
async def test_cancellation_and_unwind_end_before_the_lease(ack_wait: float) -> None:
    # Stopped no later than the lease minus the unwind allowed (and a little to spare
    # for the watch's own wake-up), so an honest unwind ends before the lease does.
    stuck_s = runner(ack_wait).stuck_s
    latest = ack_wait - stuck_s - 0.05 * ack_wait
    assert await stopped_after(ack_wait, latest), (
        f"ack_wait {ack_wait:g}s: not stopped after {latest:g}s unrenewed; "
        f"with {stuck_s:g}s to unwind it may outlast its lease"
    )


@pytest.mark.parametrize("ack_wait", ACK_WAITS)
async def test_healthy_renewals_never_trip_the_watch(ack_wait: float) -> None:
    # One beat missed (two intervals unrenewed) is not yet a lost lease.
    interval = max(0.2, ack_wait / 3)
    assert not await stopped_after(ack_wait, 2 * interval + 0.02 * ack_wait)


unwinding = asyncio.Event()


@handler("test.unit.slow_unwind")
async def slow_unwind(ctx: TaskContext, payload: Any) -> Any:
    """Sleep past its timeout; once cancelled, take 0.2 s to unwind (then re-raise)."""
    try:
        await asyncio.sleep(3600)
    finally:
        unwinding.set()
        await asyncio.sleep(0.2)


async def test_a_timeout_stays_a_timeout_when_the_lease_watch_stops_its_unwind() -> None:
    # The handler times out and unwinds; meanwhile the lease watch (here: its stop call)
    # gives up on the lease. The attempt timed out: a counted failure, not an uncounted
    # interrupt that would let a handler time out for ever (review item 3).
    attempt = runner(30.0)
    r = Running(claim("test.unit.slow_unwind", timeout_s=0.1), cast(Msg, None))
    execute = asyncio.ensure_future(attempt._execute(r))
    await asyncio.wait_for(unwinding.wait(), 5)
    r.stop("lease_unrenewed")
    outcome = await asyncio.wait_for(execute, 5)
    assert outcome is not None
    assert (outcome.kind, outcome.error_type) == ("failed", "TimeoutError"), outcome
