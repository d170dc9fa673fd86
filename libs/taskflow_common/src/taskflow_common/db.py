"""Postgres access: the asyncpg pool, its timeouts, and the translation of driver errors.

Every service opens one pool with :func:`open_pool`. Acquiring waits at most
``DB_ACQUIRE_TIMEOUT`` and statements run at most ``DB_STATEMENT_TIMEOUT``, so a
Postgres outage surfaces as :class:`~taskflow_common.errors.UnavailableError` within
seconds instead of a hang.

A connection the server closed (``pg_terminate_backend``, a failover, a pgbouncer
restart) is an outage too, and is discarded so that the pool opens a fresh one. The
server's ``FATAL`` reaches an idle pooled connection one event-loop turn before the
socket's end: a query started in between fails with asyncpg's ``InternalClientError``
("cannot switch to state 12; another operation (2) is in progress"), without being sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import orjson

from taskflow_common.config import CommonSettings
from taskflow_common.errors import TaskFlowError, UnavailableError

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
    # The driver's protocol state is broken, in practice because the server closed the
    # connection under it (see the module doc); the statement was not run.
    asyncpg.exceptions.InternalClientError,
)

LOST_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)
"""Errors after which a connection is unusable: it is terminated, never reused.

A statement timeout or a cancelled query (also transient) leaves the connection usable.
"""


def connection_lost(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """True when ``exc`` raised while using ``conn`` means that ``conn`` is gone or broken."""
    return isinstance(exc, LOST_ERRORS) or _closed(conn)


def _closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.exceptions.InterfaceError:
        # A pooled connection that closed under its user was detached from the proxy
        # (asyncpg's pool frees the slot itself): every method call raises.
        return True


def _discard(conn: asyncpg.Connection) -> None:
    """Terminate ``conn`` (a no-op when asyncpg's pool already detached it)."""
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        conn.terminate()


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
    translates transient driver errors the same way. A connection found closed or broken
    (:func:`connection_lost`) is terminated before it goes back, so the pool replaces it.
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
        except Exception as exc:
            lost = connection_lost(conn, exc)
            if lost:
                # Never hand a broken connection to the next request: the pool opens a
                # new one on demand (release() of a closed connection just frees its slot).
                _discard(conn)
            if isinstance(exc, TaskFlowError) or not (lost or isinstance(exc, TRANSIENT_ERRORS)):
                raise
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
