"""Postgres access: the asyncpg pool, its timeouts, and the translation of driver errors.

Every service opens one pool with :func:`open_pool`. Acquiring waits at most
``DB_ACQUIRE_TIMEOUT`` and statements run at most ``DB_STATEMENT_TIMEOUT``, so a
Postgres outage surfaces as :class:`~taskflow_common.errors.UnavailableError` within
seconds instead of a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import orjson

from taskflow_common.config import CommonSettings
from taskflow_common.errors import UnavailableError

T = TypeVar("T")

# Errors that mean "Postgres is not there right now", as opposed to a bad statement.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.PostgresConnectionError,
    # A database that does not exist (yet) or refuses our credentials is, from a
    # request's point of view, a dependency that is not available: 503, not 500.
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns travel as text; orjson encodes/decodes them on our side.
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


class Database:
    """A pool plus the timeouts from settings.

    ``acquire()`` hands out a connection or raises :class:`UnavailableError` after
    ``acquire_timeout_s``; :meth:`run` runs one coroutine on a pooled connection and
    translates transient driver errors the same way.
    """

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """Yield a pooled connection; raise :class:`UnavailableError` when none comes in time."""
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"postgres unavailable: {exc.__class__.__name__}") from exc
        try:
            yield conn
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"postgres unavailable: {exc.__class__.__name__}") from exc
        finally:
            await self.pool.release(conn)

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` on a pooled connection, translating outages to UnavailableError."""
        async with self.acquire() as conn:
            return await fn(conn)

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise :class:`UnavailableError` when Postgres does not answer."""
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")


async def connect(settings: CommonSettings, **kwargs: Any) -> asyncpg.Connection:
    """Open one standalone connection (for LISTEN) with the same codecs and timeouts."""
    conn: asyncpg.Connection = await asyncpg.connect(
        settings.database_url,
        timeout=settings.db_acquire_timeout,
        command_timeout=settings.db_statement_timeout,
        **kwargs,
    )
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def open_pool(
    settings: CommonSettings, *, min_size: int | None = None, max_size: int | None = None
) -> AsyncIterator[Database]:
    """Open the asyncpg pool for ``settings.database_url`` and close it on exit.

    Sizes default to ``DB_POOL_MIN``/``DB_POOL_MAX``. Raises :class:`UnavailableError`
    when Postgres cannot be reached at start.
    """
    low = settings.db_pool_min if min_size is None else min_size
    high = max(settings.db_pool_max if max_size is None else max_size, low, 1)
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=low,
            max_size=high,
            timeout=settings.db_acquire_timeout,
            command_timeout=settings.db_statement_timeout,
            init=_init_connection,
            # The pool's reset() on release costs a round trip per checkout; our code
            # never leaves session state behind (no SET, no temp tables, LISTEN only
            # on dedicated connections), so skip it.
            reset=_no_reset,
        )
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"postgres unavailable at start: {exc}") from exc
    try:
        yield Database(pool, settings.db_acquire_timeout)
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except TRANSIENT_ERRORS:  # TimeoutError is one of them
            pool.terminate()


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None
