"""Built-in handlers, as in the original TaskFlow: ``demo`` and ``fail``."""

from __future__ import annotations

import asyncio
from typing import Any

from taskflow_worker.handlers import PermanentError, TaskContext, handler


@handler("demo")
async def demo(ctx: TaskContext, payload: Any) -> Any:
    """Return the payload unchanged, after sleeping ``payload["sleep_ms"]`` ms if given."""
    if isinstance(payload, dict):
        sleep_ms = payload.get("sleep_ms")
        if isinstance(sleep_ms, int | float) and not isinstance(sleep_ms, bool) and sleep_ms > 0:
            await asyncio.sleep(sleep_ms / 1000)
    return payload


@handler("fail")
async def fail(ctx: TaskContext, payload: Any) -> Any:
    """Always fail permanently (the task is dead-lettered on its first attempt)."""
    reason = payload.get("reason") if isinstance(payload, dict) else None
    raise PermanentError(str(reason or "the fail handler always fails"))
