"""The dev database: create it when missing, apply ``migrations/`` to it.

Both helpers connect with asyncpg to whatever server the URL names (embedded or not)
and close their connection before returning.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskflow_common import migrate


def quote_ident(name: str) -> str:
    """Quote a Postgres identifier (``a"b`` -> ``"a""b"``)."""
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist yet.

    Connects to the ``postgres`` database of the same server to create it. Raises
    ``OSError`` / ``asyncpg.PostgresError`` when the server cannot be used.
    """
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    parts = urlsplit(url)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute("CREATE DATABASE " + quote_ident(parts.path.lstrip("/")))
    except asyncpg.DuplicateDatabaseError:
        pass  # created concurrently
    finally:
        await admin.close()


async def migrate_database(url: str, directory: Path) -> list[int]:
    """Apply the migrations in ``directory`` to ``url``; return the versions applied now.

    Raises ``OSError`` / ``asyncpg.PostgresError`` / ``migrate.MigrationError``.
    """
    conn = await asyncpg.connect(url)
    try:
        return await migrate.apply(conn, directory)
    finally:
        await conn.close()
