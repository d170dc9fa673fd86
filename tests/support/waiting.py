"""Poll a condition against a deadline: the only way tests wait for something."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``predicate`` (sync or async) every ``interval`` s until it returns a truthy value.

    Returns that value. Exceptions of the types in ``ignore`` count as "not yet" (e.g.
    ``ConnectionError`` while a server starts); others propagate. Raises
    ``AssertionError`` naming ``what`` (default: the predicate's name) and the last
    value or ignored error once ``timeout`` seconds have passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except ignore as exc:
            last = exc
        if loop.time() >= deadline:
            desc = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {desc} (last: {last!r})"
            )
        await asyncio.sleep(interval)
