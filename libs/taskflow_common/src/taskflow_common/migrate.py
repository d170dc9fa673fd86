"""Apply the numbered plain-SQL migrations in ``migrations/``.

Files are named ``NNNN_description.sql`` and applied in numeric order, each in its own
transaction, and recorded in ``schema_migrations`` with a SHA-256 checksum. A session
advisory lock serialises concurrent runners, so running twice, or from two processes
at once, applies each file exactly once. An applied file whose text has changed is
refused (:class:`MigrationError`) rather than silently skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from taskflow_common.errors import TaskFlowError

# pg_advisory_lock key: the first 8 bytes of sha256("taskflow.migrate") as a signed int64.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"taskflow.migrate").digest()[:8], "big", signed=True)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
SNAPSHOT = "schema.sql"
"""The schema snapshot next to the migrations (what they build; never applied)."""


class MigrationError(TaskFlowError):
    """A migration file is misnamed, duplicated, or was edited after being applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``version`` is its 4-digit number."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 hex digest of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """Read every ``NNNN_name.sql`` in ``directory``, sorted by number.

    Raises :class:`MigrationError` for a ``.sql`` file with another name (except the
    :data:`SNAPSHOT`) or two files sharing a number.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        if path.name == SNAPSHOT:
            continue
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: expected NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: number {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def apply(conn: asyncpg.Connection, directory: Path) -> list[int]:
    """Apply the pending migrations from ``directory`` over ``conn``.

    Returns the versions applied by this call (empty when up to date). Raises
    :class:`MigrationError` when an applied file's checksum differs from the record.
    """
    migrations = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[int] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(
                        f"{m.version:04d}_{m.name}.sql changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            done.append(m.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


def default_directory() -> Path:
    """Return ``./migrations`` (the repository and the service images keep them there)."""
    return Path.cwd() / "migrations"


async def _run(dsn: str, directory: Path) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply(conn, directory)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """``taskflow-migrate [--dir DIR]``: migrate the database named by ``DATABASE_URL``."""
    from taskflow_common.config import CommonSettings, load
    from taskflow_common.errors import ConfigError

    parser = argparse.ArgumentParser(prog="taskflow-migrate", description=__doc__)
    parser.add_argument("--dir", type=Path, default=default_directory(), help="migrations folder")
    args = parser.parse_args(argv)
    try:
        settings = load(CommonSettings)
    except ConfigError as exc:
        print(f"taskflow-migrate: {exc}", file=sys.stderr)
        return 2
    try:
        done = asyncio.run(_run(settings.database_url, args.dir))
    except (OSError, asyncpg.PostgresError, MigrationError) as exc:
        print(f"taskflow-migrate: {exc}", file=sys.stderr)
        return 1
    print(f"migrations applied: {', '.join(f'{v:04d}' for v in done) or 'none (up to date)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
