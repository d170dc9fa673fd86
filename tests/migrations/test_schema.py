"""The committed schema snapshot (``migrations/schema.sql``) is what the migrations build.

A fresh database on the embedded Postgres is migrated and dumped with that server's own
``pg_dump`` (``tests.support.schema``); the normalised dump must equal the file. A new
migration therefore comes with its schema diff in review, and a migration edited after
the fact (or a schema changed by hand in one) shows up here.
"""

from __future__ import annotations

import difflib

from tests.support.pg import PgHandle, create_database, drop_database
from tests.support.schema import REFRESH, SNAPSHOT, migrated_dump, normalise


async def test_migrations_build_the_committed_schema(embedded_pg: PgHandle) -> None:
    server = embedded_pg.require_embedded()
    name = await create_database(embedded_pg)
    try:
        dumped = await migrated_dump(server, embedded_pg.dsn(name), SNAPSHOT.parent)
    finally:
        await drop_database(embedded_pg, name)
    committed = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    if dumped != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                dumped.splitlines(keepends=True),
                fromfile="migrations/schema.sql (committed)",
                tofile="migrated database (pg_dump)",
            )
        )
        raise AssertionError(
            f"migrations/schema.sql differs from what the migrations build:\n{diff}\n"
            f"If the migrations are right, refresh the snapshot with `{REFRESH}` "
            "and commit it with them."
        )


def test_normalising_drops_what_varies_between_runs() -> None:
    raw = (
        "--\n-- PostgreSQL database dump\n--\n\\restrict AbC123\n\n"
        "SET statement_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\n\n"
        "CREATE TABLE public.t (\n    id integer\n);\n\n\n\\unrestrict AbC123\n"
    )
    text = normalise(raw)
    body = text.split("\n\n", 1)[1]  # after the header
    assert body == "CREATE TABLE public.t (\n    id integer\n);\n"
    assert "restrict" not in text.replace("restrict` lines", "")
