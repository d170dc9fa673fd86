"""The schema snapshot: ``migrations/schema.sql`` is what migrating a fresh database yields.

:func:`dump` runs ``pg_dump --schema-only`` from the embedded Postgres's own bin dir (so
client and server are the same version and the text is stable) and :func:`normalise`
drops what varies between runs and machines: comments with versions and timestamps,
``SET`` lines, ``\\restrict`` keys, owners and grants. ``tests/migrations/test_schema.py``
compares a fresh dump with the committed file.

Refresh the snapshot after adding a migration::

    .venv/bin/python -m tests.support.schema        # writes migrations/schema.sql

(an embedded Postgres is started for it, as the tests do), then review the diff.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg

from taskflow_common import migrate
from taskflow_devstack.servers import PostgresServer

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = REPO / "migrations" / "schema.sql"
REFRESH = ".venv/bin/python -m tests.support.schema"
"""The command that rewrites :data:`SNAPSHOT` (shown when the test finds a difference)."""

_HEADER = f"""\
-- The schema that migrations/*.sql build, as pg_dump --schema-only shows it (normalised).
-- Generated: do not edit. Refresh with `{REFRESH}` after adding a migration;
-- tests/migrations/test_schema.py fails while this file and the migrations disagree.

"""

_DROPPED_PREFIXES = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")


def normalise(text: str) -> str:
    """Drop comments, ``SET``/``set_config``/``\\restrict`` lines and repeated blank lines."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith(_DROPPED_PREFIXES):
            continue
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return _HEADER + "\n".join(out) + "\n"


def dump(server: PostgresServer, dsn: str) -> str:
    """Return the normalised schema of the database at ``dsn`` (``pg_dump`` of ``server``).

    Raises ``subprocess.CalledProcessError`` (with pg_dump's stderr) if the dump fails.
    """
    pg_dump = server.install_dir / "bin" / "pg_dump"
    done = subprocess.run(
        [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", f"--dbname={dsn}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return normalise(done.stdout)


async def migrated_dump(server: PostgresServer, dsn: str, migrations: Path) -> str:
    """Apply every migration to the (empty) database at ``dsn``; return its :func:`dump`."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn, migrations)
    finally:
        await conn.close()
    return await asyncio.to_thread(dump, server, dsn)


async def _refresh() -> None:
    from tests.support.pg import PgHandle, create_database, drop_database, embedded_postgres

    with embedded_postgres(REPO / ".run") as server:
        handle = PgHandle(admin_url=server.url, server=server)
        name = await create_database(handle)
        try:
            text = await migrated_dump(server, handle.dsn(name), REPO / "migrations")
        finally:
            await drop_database(handle, name)
    SNAPSHOT.write_text(text, encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(REPO)} ({len(text.splitlines())} lines)", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(_refresh())
