"""Handlers for fault tests and for reproducing faults by hand.

Load with ``WORKER_HANDLERS=taskflow_worker.builtin,taskflow_worker.testing``.
Payload keys (all optional): ``sleep_s`` (float, seconds).

- ``test.sleep``: sleep ``sleep_s`` (default 1), return ``{"slept_s": ...}``;
- ``test.flaky``: fail with ``RuntimeError`` while ``ctx.attempt <= payload["fail_times"]``,
  then return ``{"attempt": n}``;
- ``test.always_fail``: always raise ``RuntimeError`` (retryable);
- ``test.block``: block the event loop with ``time.sleep(sleep_s)`` (a misbehaving handler);
- ``test.crash``: SIGKILL the worker process (after ``sleep_s``, default 0);
- ``test.unserializable``: return a value JSON cannot hold (a set);
- ``test.unstorable``: return JSON that Postgres' ``jsonb`` refuses (a ``\\u0000``);
- ``test.nul_error``: raise an error whose message holds a NUL byte (not valid ``text``);
- ``test.trace``: like ``test.sleep``, and append one JSON line per run's start and end
  (``{"task", "attempt", "worker", "event": "start"|"end", "how", "t"}``, ``t`` in Unix
  seconds) to the file ``payload["trace"]``: what a user's side effects would show;
- ``test.stubborn``: sleep ``sleep_s`` (default 3600) and ignore every cancellation; with
  ``payload["trace"]``, its start and end are written there as ``test.trace`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

from taskflow_worker.handlers import TaskContext, handler


def _seconds(payload: Any, default: float) -> float:
    value = payload.get("sleep_s", default) if isinstance(payload, dict) else default
    return float(value) if isinstance(value, int | float) else default


@handler("test.sleep")
async def sleep(ctx: TaskContext, payload: Any) -> Any:
    """Sleep cooperatively for ``sleep_s`` seconds."""
    seconds = _seconds(payload, 1.0)
    await asyncio.sleep(seconds)
    return {"slept_s": seconds}


@handler("test.flaky")
async def flaky(ctx: TaskContext, payload: Any) -> Any:
    """Fail (retryably) on the first ``fail_times`` attempts, then succeed."""
    fail_times = payload.get("fail_times", 1) if isinstance(payload, dict) else 1
    if ctx.attempt <= int(fail_times):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("test.always_fail")
async def always_fail(ctx: TaskContext, payload: Any) -> Any:
    """Fail retryably every time."""
    raise RuntimeError(f"always fails (attempt {ctx.attempt})")


@handler("test.block")
async def block(ctx: TaskContext, payload: Any) -> Any:
    """Block the whole event loop for ``sleep_s`` seconds (no await)."""
    seconds = _seconds(payload, 1.0)
    time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose: that is the fault
    return {"blocked_s": seconds}


@handler("test.crash")
async def crash(ctx: TaskContext, payload: Any) -> Any:
    """SIGKILL this worker process after ``sleep_s`` seconds."""
    await asyncio.sleep(_seconds(payload, 0.0))
    os.kill(os.getpid(), signal.SIGKILL)
    return None  # pragma: no cover


@handler("test.unserializable")
async def unserializable(ctx: TaskContext, payload: Any) -> Any:
    """Return a set, which JSON cannot represent."""
    return {1, 2, 3}


@handler("test.unstorable")
async def unstorable(ctx: TaskContext, payload: Any) -> Any:
    """Return valid JSON that ``jsonb`` cannot store (a NUL character in a string)."""
    return {"text": "nul \x00 inside"}


@handler("test.nul_error")
async def nul_error(ctx: TaskContext, payload: Any) -> Any:
    """Fail with a message Postgres cannot store as ``text`` (it holds a NUL byte)."""
    raise RuntimeError("bad byte \x00 in the message")


def _trace(path: str, ctx: TaskContext, event: str, how: str = "") -> None:
    line = {
        "task": str(ctx.task_id),
        "attempt": ctx.attempt,
        "worker": os.environ.get("WORKER_ID", ""),
        "event": event,
        "how": how,
        "t": time.time(),
    }
    # One O_APPEND write per line: lines of several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@handler("test.trace")
async def trace(ctx: TaskContext, payload: Any) -> Any:
    """Sleep ``sleep_s`` seconds, writing the run's start and end to ``payload["trace"]``."""
    path = str(payload["trace"])
    _trace(path, ctx, "start")
    how = "error"
    try:
        await asyncio.sleep(_seconds(payload, 1.0))
        how = "returned"
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        _trace(path, ctx, "end", how)
    return {"attempt": ctx.attempt}


@handler("test.stubborn")
async def stubborn(ctx: TaskContext, payload: Any) -> Any:
    """Sleep ``sleep_s`` seconds (default 3600), swallowing every ``CancelledError``."""
    path = payload.get("trace") if isinstance(payload, dict) else None
    if path:
        _trace(str(path), ctx, "start")
    until = time.monotonic() + _seconds(payload, 3600.0)
    while (left := until - time.monotonic()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(left)  # a misbehaving handler: it ignores cancellation
    if path:
        _trace(str(path), ctx, "end", "returned")
    return {"stubborn": True}
