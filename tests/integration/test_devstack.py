"""The embedded servers and the dev stack CLI (``python -m taskflow_devstack``)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from taskflow_devstack.commands import run
from taskflow_devstack.servers import (
    NatsServer,
    PostgresServer,
    free_port,
    pg_work_dir,
    port_is_free,
    preferred_port,
)
from taskflow_devstack.stack import Stack
from tests.support.pg import PgHandle, drop_database
from tests.support.waiting import wait_for


def _version(nc: Client) -> tuple[int, int]:
    version = nc.connected_server_version  # nats-py's ServerVersion, not a str
    return (version.major, version.minor)


def _info_within(port: int, timeout: float) -> bool:
    """True when the NATS server on ``port`` sends its INFO line within ``timeout`` s."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            return sock.recv(5) == b"INFO "
        except TimeoutError:
            return False


def test_preferred_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not port_is_free(taken)
        other = preferred_port(taken)
        assert other != taken
        assert port_is_free(other)
    port = free_port()
    assert preferred_port(port) == port


async def test_embedded_nats_answers_with_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        assert _version(nc) >= (2, 10)
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "store", log_file=tmp_path / "nats.log")
    try:
        yield server.start()
    finally:
        server.stop()


async def test_nats_restart_keeps_the_port_and_optionally_the_store(own_nats: NatsServer) -> None:
    url = own_nats.url
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
    finally:
        await nc.close()

    own_nats.restart()
    assert own_nats.url == url
    nc = await nats.connect(url)
    try:
        assert (await nc.jetstream().stream_info("KEEP")).config.name == "KEEP"
    finally:
        await nc.close()

    own_nats.restart(clear_store=True)
    nc = await nats.connect(url)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
        assert "KEEP" not in names
    finally:
        await nc.close()


def test_nats_pause_freezes_and_resume_thaws(own_nats: NatsServer) -> None:
    assert _info_within(own_nats.port, 2.0)
    own_nats.pause()
    try:
        assert own_nats.paused
        assert not _info_within(own_nats.port, 0.3)  # the kernel accepts; nobody answers
    finally:
        own_nats.resume()
    assert _info_within(own_nats.port, 2.0)


def test_nats_stop_frees_the_port(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "store")
    with server:
        assert server.pid is not None
        assert not port_is_free(server.port)
    assert not server.running
    assert port_is_free(server.port)


@pytest.fixture
def scratch_pg(tmp_path: Path) -> Iterator[PostgresServer]:
    # tmp_path is mode 700: as root this exercises the /tmp fallback for `nobody`.
    server = PostgresServer(pg_work_dir(tmp_path / "pg", "test-scratch"), fsync=False)
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def test_embedded_postgres_starts_answers_restarts_and_stops(
    scratch_pg: PostgresServer,
) -> None:
    scratch_pg.start()
    if os.geteuid() == 0:
        assert scratch_pg.data_dir.stat().st_uid != 0  # Postgres refuses to run as root
    conn = await asyncpg.connect(scratch_pg.url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()

    first = scratch_pg.postmaster_pid()
    scratch_pg.restart()
    assert scratch_pg.postmaster_pid() not in (None, first)
    conn = await asyncpg.connect(scratch_pg.url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()

    scratch_pg.stop()
    assert not scratch_pg.running
    assert port_is_free(scratch_pg.port)


async def test_embedded_postgres_pause_blocks_until_resume(embedded_pg: PgHandle) -> None:
    server = embedded_pg.require_embedded()
    conn = await asyncpg.connect(embedded_pg.admin_url)
    try:
        server.pause()
        try:
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT 1", timeout=0.3)
        finally:
            server.resume()
    finally:
        conn.terminate()
    conn = await asyncpg.connect(embedded_pg.admin_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def _devstack(args: list[str], env: dict[str, str], repo: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskflow_devstack", *args],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "NATS_URL"}}


async def test_cli_migrate_creates_and_migrates_the_database(
    pg_server: PgHandle, nats_server: NatsServer, repo_root: Path, tmp_path: Path
) -> None:
    name = "taskflow_t_cli_" + os.urandom(4).hex()
    url = pg_server.dsn(name)
    env = _clean_env() | {"DATABASE_URL": url, "NATS_URL": nats_server.url}
    args = ["migrate", "--run-dir", str(tmp_path / "run")]
    try:
        proc = _devstack(args, env, repo_root)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        assert "migrations applied: 0001" in err
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
        finally:
            await conn.close()
    finally:
        await drop_database(pg_server, name)


async def test_cli_servers_prints_urls_and_stops_cleanly_on_sigterm(
    repo_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = _devstack(["servers", "--run-dir", str(run_dir)], _clean_env(), repo_root)
    try:
        assert proc.stdout is not None
        lines = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)]
        lines.append(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10))
        urls = dict(line.strip().split("=", 1) for line in lines)
        assert set(urls) == {"DATABASE_URL", "NATS_URL"}, lines

        conn = await asyncpg.connect(urls["DATABASE_URL"])
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
        finally:
            await conn.close()
        nc = await nats.connect(urls["NATS_URL"])
        try:
            assert _version(nc) >= (2, 10)
        finally:
            await nc.close()

        state = json.loads((run_dir / "stack.json").read_text())
        assert state["postgres"]["pid"]
        assert state["nats"]["pid"]

        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        state = json.loads((run_dir / "stack.json").read_text())
        assert state["postgres"]["pid"] is None
        assert state["nats"]["pid"] is None
        nats_port = int(urls["NATS_URL"].rsplit(":", 1)[1])
        await wait_for(lambda: port_is_free(nats_port), 5, what="NATS port to close")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes the pipes
        purge = _devstack(["stop", "--purge", "--run-dir", str(run_dir)], _clean_env(), repo_root)
        await asyncio.to_thread(purge.communicate, timeout=60)


def test_a_second_run_refuses_while_the_first_serves(repo_root: Path, tmp_path: Path) -> None:
    """Two ``make run`` of one checkout: the second stops at once and leaves the first's
    record (``stack.json``) alone, so ``make stop`` still finds the first's services."""
    # A stand-in for the first run's API process: alive, its argv naming the service.
    first = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "taskflow-ingest-api"]
    )
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        state = {"services": {"taskflow-ingest-api": first.pid}}
        (run_dir / "stack.json").write_text(json.dumps(state))
        out = io.StringIO()
        stack = Stack(repo=repo_root, environ=_clean_env(), run_dir=run_dir, out=out)
        assert run(stack) == 1
        assert f"taskflow-ingest-api pid {first.pid}" in out.getvalue()
        assert json.loads((run_dir / "stack.json").read_text()) == state
        assert first.poll() is None  # the first run's process was not touched
    finally:
        first.kill()
        first.wait()
