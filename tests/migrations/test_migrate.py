"""The numbered SQL migrations: expected schema, idempotence, concurrent runners."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from taskflow_common import migrate

EXPECTED_TABLES = {"tasks", "task_executions", "dead_letters", "schema_migrations"}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrations_build_the_expected_schema(
    empty_database_url: str, migrations_dir: Path
) -> None:
    versions = [m.version for m in migrate.discover(migrations_dir)]
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await _tables(conn) == set()
        assert await migrate.apply(conn, migrations_dir) == versions
        assert await _tables(conn) >= EXPECTED_TABLES
        recorded = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in recorded] == versions
        checksums = {m.version: m.checksum for m in migrate.discover(migrations_dir)}
        assert all(r["checksum"] == checksums[r["version"]] for r in recorded)
    finally:
        await conn.close()


async def test_applying_twice_applies_nothing_the_second_time(
    empty_database_url: str, migrations_dir: Path
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await migrate.apply(conn, migrations_dir)
        assert await migrate.apply(conn, migrations_dir) == []
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrate.discover(migrations_dir))
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_file_once(
    empty_database_url: str, migrations_dir: Path
) -> None:
    versions = [m.version for m in migrate.discover(migrations_dir)]
    conns = [await asyncpg.connect(empty_database_url) for _ in range(2)]
    try:
        done = await asyncio.gather(*(migrate.apply(c, migrations_dir) for c in conns))
        # The advisory lock serialises the runners: one applies all, the other none.
        assert sorted(done, key=len) == [[], versions]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in rows] == versions
        assert await _tables(conns[0]) >= EXPECTED_TABLES
    finally:
        for conn in conns:
            await conn.close()


async def test_an_edited_applied_file_is_refused(
    empty_database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir, copy)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate.apply(conn, copy)
        first = sorted(copy.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            await migrate.apply(conn, copy)
    finally:
        await conn.close()


async def test_each_test_database_is_cloned_from_the_migrated_template(
    database_url: str, migrations_dir: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await _tables(conn) >= EXPECTED_TABLES
        assert await migrate.apply(conn, migrations_dir) == []
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
    finally:
        await conn.close()
