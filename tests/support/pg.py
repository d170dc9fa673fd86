"""The test session's Postgres: an external server or a cached embedded cluster.

With ``TASKFLOW_TEST_DATABASE_URL`` (or ``DATABASE_URL``) set, tests use that server
through its admin DSN. Otherwise the session starts the embedded cluster kept in
``.run/test-pg`` (or its /tmp fallback when root's ``nobody`` cannot reach the repo),
holding an ``flock`` on it for the whole session; a second concurrent session gets a
throw-away cluster instead. Databases are cloned from a migrated template, one per test.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from taskflow_common import migrate
from taskflow_devstack.database import quote_ident
from taskflow_devstack.rundir import test_pg_dir, test_pg_lock
from taskflow_devstack.servers import DevStackError, PostgresServer

TEMPLATE_PREFIX = "taskflow_tpl_"
DATABASE_PREFIX = "taskflow_t_"


def dsn_for(url: str, database: str) -> str:
    """Return ``url`` with its database replaced by ``database``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


@dataclass
class PgHandle:
    """What the ``pg_server`` fixture yields.

    ``admin_url`` points at a database the session may connect to for CREATE/DROP
    DATABASE; ``server`` is the embedded server (None when an external one is used).
    """

    admin_url: str
    server: PostgresServer | None

    def dsn(self, database: str) -> str:
        """The DSN of ``database`` on this server."""
        return dsn_for(self.admin_url, database)

    def require_embedded(self) -> PostgresServer:
        """Return the embedded server; skip the test when running against an external one."""
        if self.server is None:
            pytest.skip("needs the embedded Postgres (TASKFLOW_TEST_DATABASE_URL is set)")
        return self.server

    def heal(self) -> None:
        """Undo a test's pause/stop of the embedded server so later tests find it up."""
        if self.server is None:
            return
        if self.server.paused:
            self.server.resume()
        if not self.server.running:
            self.server.start()


async def admin_execute(admin_url: str, *statements: str) -> None:
    """Run ``statements`` one by one on a fresh connection to ``admin_url``."""
    conn = await asyncpg.connect(admin_url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def create_template(handle: PgHandle, migrations: Path) -> str:
    """Create ``taskflow_tpl_<hex>``, migrate it, and mark it a connection-less template.

    ``ALLOW_CONNECTIONS false`` keeps stray connections from blocking the per-test
    ``CREATE DATABASE ... TEMPLATE`` (which needs the template to have none).
    """
    name = TEMPLATE_PREFIX + secrets.token_hex(4)
    await admin_execute(handle.admin_url, f"CREATE DATABASE {quote_ident(name)}")
    conn = await asyncpg.connect(handle.dsn(name))
    try:
        await migrate.apply(conn, migrations)
    finally:
        await conn.close()
    await admin_execute(
        handle.admin_url,
        f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false",
    )
    return name


async def drop_template(handle: PgHandle, name: str) -> None:
    """Drop a template made by :func:`create_template`."""
    await admin_execute(
        handle.admin_url,
        f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE false",
        f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)",
    )


async def create_database(handle: PgHandle, template: str = "template0") -> str:
    """Create ``taskflow_t_<hex>`` from ``template``; return its name."""
    name = DATABASE_PREFIX + secrets.token_hex(6)
    await admin_execute(
        handle.admin_url, f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}"
    )
    return name


async def drop_database(handle: PgHandle, name: str) -> None:
    """Drop ``name``, disconnecting whatever still uses it."""
    await admin_execute(
        handle.admin_url, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"
    )


async def drop_leftovers(handle: PgHandle) -> None:
    """Drop test and template databases left by crashed sessions (embedded cluster only)."""
    conn = await asyncpg.connect(handle.admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'taskflow\\_t%'"
        )
        for row in rows:
            name = quote_ident(row["datname"])
            await conn.execute(f"ALTER DATABASE {name} WITH IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def external_url(environ: Mapping[str, str]) -> str | None:
    """The admin DSN of an external test server, if the environment names one."""
    return environ.get("TASKFLOW_TEST_DATABASE_URL") or environ.get("DATABASE_URL") or None


@contextlib.contextmanager
def embedded_postgres(run_dir: Path) -> Iterator[PostgresServer]:
    """Start the cached test cluster (or a throw-away one if it is in use); stop it after.

    A new free port every session; ``fsync=off``. A cached cluster that fails to start
    is wiped and created again once.
    """
    lock_path = test_pg_lock(run_dir)
    with lock_path.open("a") as lock:
        if _try_lock(lock):
            server = PostgresServer(test_pg_dir(run_dir), fsync=False)
            # Left running by a session that was killed: the lock proves it is orphaned.
            server.stop(mode="immediate")
            try:
                server.start()
            except DevStackError:
                shutil.rmtree(server.data_dir, ignore_errors=True)
                server.start()
            try:
                yield server
            finally:
                server.stop()
            return
    scratch = Path(tempfile.mkdtemp(prefix="taskflow-test-pg-"))
    server = PostgresServer(scratch, fsync=False)
    try:
        yield server.start()
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(scratch, ignore_errors=True)


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
