"""The handler API: ``@handler("type")`` async functions, their context and errors.

A handler module is any importable module named in ``WORKER_HANDLERS`` (comma
separated)::

    from taskflow_worker import PermanentError, TaskContext, handler

    @handler("resize-image")
    async def resize(ctx: TaskContext, payload: dict) -> dict:
        ...  # return any JSON-serialisable value; raise to retry,
        ...  # raise PermanentError to dead-letter at once

Raising any other exception fails the attempt and retries it with backoff while the
task has attempts left; exceeding the timeout (per-task ``timeout_s`` or
``WORKER_TASK_TIMEOUT``) counts as such a failure.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from taskflow_common.errors import TaskFlowError
from taskflow_common.logs import EventLogger

Handler: TypeAlias = Callable[["TaskContext", Any], Awaitable[Any]]

_registry: dict[str, Handler] = {}


class PermanentError(TaskFlowError):
    """Raised by a handler: retrying cannot help; fail the task and dead-letter it now."""


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler knows about its run.

    ``deadline`` is a ``time.time()`` timestamp (s) after which the attempt times out;
    ``attempt`` counts runs from 1.
    """

    task_id: uuid.UUID
    type: str
    attempt: int
    priority: str
    deadline: float
    log: EventLogger


def handler(task_type: str) -> Callable[[Handler], Handler]:
    """Register the decorated coroutine function as the handler for ``task_type``.

    Raises ``ValueError`` if another function already handles that type.
    """

    def register(fn: Handler) -> Handler:
        existing = _registry.get(task_type)
        if existing is not None and existing is not fn:
            raise ValueError(f"task type {task_type!r} already has a handler: {existing!r}")
        _registry[task_type] = fn
        return fn

    return register


def lookup(task_type: str) -> Handler | None:
    """Return the handler registered for ``task_type``, or None."""
    return _registry.get(task_type)


def load_modules(modules: list[str]) -> list[str]:
    """Import every handler module; return the registered task types, sorted.

    Raises ``ImportError`` (with the module name) when a module cannot be imported.
    """
    for name in modules:
        importlib.import_module(name)
    return sorted(_registry)
