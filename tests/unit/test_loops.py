"""Long-running loops survive any error of one iteration (taskflow_common.loops)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from taskflow_common.errors import UnavailableError
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.retry import Backoff


class _Deadlock(Exception):
    """Stands for any non-outage error a pass can raise (e.g. a broken deadlock)."""


async def test_a_loop_outlives_every_kind_of_error_and_counts_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    errors = LoopErrors(registry)
    stop = asyncio.Event()
    passes: list[int] = []
    failures = [UnavailableError("pg away"), _Deadlock("deadlock detected"), KeyError("x")]

    async def iteration() -> float | None:
        passes.append(len(passes))
        if failures:
            raise failures.pop(0)
        if len(passes) >= 5:
            stop.set()
        return None

    with caplog.at_level(logging.WARNING, logger="taskflow.loops"):
        await asyncio.wait_for(
            run_loop("sweep", iteration, stop, errors=errors, backoff=Backoff(0.001, 0.004)),
            timeout=10,
        )
    assert len(passes) == 5
    counted = {
        s.labels["error"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "taskflow_loop_errors_total"
    }
    assert counted == {"UnavailableError": 1.0, "_Deadlock": 1.0, "KeyError": 1.0}
    lines = [(r.levelname, r.getMessage(), r.__dict__["fields"]) for r in caplog.records]
    assert [(lvl, ev, f["error_class"]) for lvl, ev, f in lines] == [
        ("WARNING", "loop_failed", "UnavailableError"),
        ("ERROR", "loop_failed", "_Deadlock"),
        ("ERROR", "loop_failed", "KeyError"),
    ]
    assert all(f["loop"] == "sweep" for _, _, f in lines)
    json.dumps([f for _, _, f in lines])  # the fields are plain JSON values


async def test_cancellation_is_never_swallowed() -> None:
    started = asyncio.Event()

    async def iteration() -> float | None:
        started.set()
        await asyncio.Event().wait()
        return None

    task = asyncio.ensure_future(run_loop("idle", iteration, asyncio.Event(), errors=None))
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_waits_what_the_pass_asks_unless_woken() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    passes = 0

    async def iteration() -> float | None:
        nonlocal passes
        passes += 1
        if passes == 2:
            stop.set()
        else:
            # Runs once the loop is parked in its wait (after it cleared ``wake``).
            asyncio.get_running_loop().call_soon(wake.set)
        return 3600.0  # would wait an hour; the wake cuts it short

    await asyncio.wait_for(run_loop("woken", iteration, stop, errors=None, wake=wake), timeout=5)
    assert passes == 2


async def test_a_wake_during_a_pass_is_not_lost() -> None:
    """A notification that arrives while a pass runs makes the next pass start at once."""
    stop, wake = asyncio.Event(), asyncio.Event()
    passes = 0

    async def iteration() -> float | None:
        nonlocal passes
        passes += 1
        if passes == 1:
            wake.set()  # arrives mid-pass, e.g. a NOTIFY for work this pass did not see
        else:
            stop.set()
        return 3600.0

    await asyncio.wait_for(run_loop("mid", iteration, stop, errors=None, wake=wake), timeout=5)
    assert passes == 2
