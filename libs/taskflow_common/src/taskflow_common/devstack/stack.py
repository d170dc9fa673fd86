"""The one-command dev stack behind ``make run``: servers, migrations, services.

:class:`Stack` uses ``DATABASE_URL`` / ``NATS_URL`` when given, otherwise starts an
embedded Postgres (``.run/pg``) and NATS (``.run/nats``) on the preferred ports 15432 and
14222 (or free ones, so nothing clashes with a machine's own 5432/4222). What it started,
and on which ports, is recorded in ``.run/stack.json``: a second run reuses servers still
running from the first, and ``stop`` stops them by the recorded PIDs. Servers a run
adopted are left running at its end; servers it started are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskflow_common import migrate
from taskflow_common.devstack.postgres import PostgresServer, pg_work_dir
from taskflow_common.devstack.processes import (
    DevStackError,
    pid_alive,
    preferred_port,
    stop_pid,
    tail_file,
)
from taskflow_common.devstack.servers import NatsServer

PG_PORT = 15432
NATS_PORT = 14222
HTTP_PORT = 8080
DLQ_HTTP_PORT = 8081
WORKER_METRICS_PORT = 9101
DISPATCHER_METRICS_PORT = 9102
DATABASE = "taskflow"
HEALTH_PATH = "/api/v1/health"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0

# Long-running services started by `run`, in start order (js-info is a CLI, not started).
SERVICES = ("taskflow-ingest-api", "taskflow-dispatcher", "taskflow-worker", "taskflow-dlq-monitor")


def find_repo(start: Path | None = None) -> Path:
    """Return the nearest folder at or above ``start`` (default cwd) with ``migrations/``
    and ``libs/taskflow_common``; ``start`` itself when none is found."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "migrations").is_dir() and (folder / "libs" / "taskflow_common").is_dir():
            return folder
    return here


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
    """Apply the migrations in ``directory`` to ``url``; return the versions applied now."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate.apply(conn, directory)
    finally:
        await conn.close()


@dataclass
class Service:
    """A service subprocess started by :meth:`Stack.start_services`."""

    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path

    def tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of its log."""
        return tail_file(self.log_file, lines)


@dataclass
class Stack:
    """Servers, migrations and services for one repository checkout.

    ``environ`` is consulted for ``DATABASE_URL``, ``NATS_URL``, ``HTTP_PORT`` and
    ``DLQ_HTTP_PORT`` and handed (with the computed values) to every service.
    """

    repo: Path
    environ: Mapping[str, str]
    run_dir: Path | None = None
    out: TextIO = field(default_factory=lambda: sys.stderr)
    database_url: str = ""
    nats_url: str = ""
    services: list[Service] = field(default_factory=list)
    _owned: list[NatsServer | PostgresServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = (self.run_dir or self.repo / ".run").resolve()

    @property
    def _run(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir

    @property
    def state_file(self) -> Path:
        """``<run_dir>/stack.json``: ports, directories and PIDs of what runs."""
        return self._run / "stack.json"

    def say(self, text: str) -> None:
        """Print a progress line for the developer."""
        print(f"devstack: {text}", file=self.out, flush=True)

    # ---- state file

    def load_state(self) -> dict[str, Any]:
        """Return the recorded state (empty when there is none or it is unreadable)."""
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the state atomically (temp file + rename)."""
        self._run.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)

    def _update_state(self, key: str, value: Any) -> None:
        state = self.load_state()
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
        self.save_state(state)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two `make run` started together must not both start a server on one data dir.
        self._run.mkdir(parents=True, exist_ok=True)
        with (self._run / "stack.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # ---- servers

    def ensure_servers(self) -> None:
        """Set ``database_url`` / ``nats_url``: from the environment, or embedded servers.

        Adopts embedded servers recorded in ``stack.json`` that still run, otherwise
        starts them. Creates the ``taskflow`` database when missing. Raises
        :class:`DevStackError` when a server cannot start.
        """
        with self._lock():
            state = self.load_state()
            self.database_url = self.environ.get("DATABASE_URL") or self._ensure_pg(state)
            self.nats_url = self.environ.get("NATS_URL") or self._ensure_nats(state)
        asyncio.run(ensure_database(self.database_url))

    def _ensure_pg(self, state: dict[str, Any]) -> str:
        rec = state.get("postgres") or {}
        data_dir = Path(rec.get("data_dir") or pg_work_dir(self._run / "pg", "pg"))
        pg = PostgresServer(data_dir, port=int(rec.get("port") or PG_PORT))
        port = pg.running_port()
        if port is not None:
            pg.port = port
            self.say(f"reusing Postgres on port {port} ({data_dir})")
        else:
            pg.port = preferred_port(pg.port)
            self.say(f"starting Postgres on port {pg.port} ({data_dir})")
            pg.start()
            self._owned.append(pg)
        rec = {"data_dir": str(data_dir), "port": pg.port, "pid": pg.postmaster_pid()}
        self._update_state("postgres", rec)
        return pg.dsn(DATABASE)

    def _ensure_nats(self, state: dict[str, Any]) -> str:
        rec = state.get("nats") or {}
        store = self._run / "nats"
        nats = NatsServer(
            store,
            port=int(rec.get("port") or NATS_PORT),
            log_file=self._run / "logs" / "nats.log",
        )
        if rec.get("pid") and nats.adopt(int(rec["pid"])):
            self.say(f"reusing NATS on port {nats.port}")
        else:
            nats.port = preferred_port(nats.port)
            self.say(f"starting NATS on port {nats.port}")
            nats.start()
            self._owned.append(nats)
        self._update_state("nats", {"store_dir": str(store), "port": nats.port, "pid": nats.pid})
        return nats.url

    def migrate(self) -> list[int]:
        """Apply ``<repo>/migrations`` to ``database_url``; return the versions applied now."""
        done = asyncio.run(migrate_database(self.database_url, self.repo / "migrations"))
        applied = ", ".join(f"{v:04d}" for v in done) or "none (up to date)"
        self.say(f"migrations applied: {applied}")
        return done

    def stop_owned_servers(self) -> None:
        """Stop the servers this run started (not adopted ones) and forget them."""
        for server in reversed(self._owned):
            key = "nats" if isinstance(server, NatsServer) else "postgres"
            self.say(f"stopping {key}")
            server.stop()
            # Keep the ports and folders so the next run prefers the same ones.
            self._update_state(key, {**self.load_state().get(key, {}), "pid": None})
        self._owned.clear()

    # ---- services

    def service_env(self) -> dict[str, str]:
        """The environment for services: inherited, plus URLs and HTTP ports."""
        env = dict(self.environ)
        env["DATABASE_URL"] = self.database_url
        env["NATS_URL"] = self.nats_url
        env.setdefault("HTTP_PORT", str(preferred_port(HTTP_PORT)))
        env.setdefault("DLQ_HTTP_PORT", str(preferred_port(DLQ_HTTP_PORT)))
        env.setdefault("WORKER_METRICS_PORT", str(preferred_port(WORKER_METRICS_PORT)))
        env.setdefault("DISPATCHER_METRICS_PORT", str(preferred_port(DISPATCHER_METRICS_PORT)))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start_services(self, env: Mapping[str, str]) -> list[str]:
        """Start every installed service in :data:`SERVICES`; return the missing ones.

        Output of each goes to ``<run_dir>/logs/<name>.log`` (truncated first).
        """
        scripts = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
        missing: list[str] = []
        logs = self._run / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            exe = shutil.which(name, path=scripts)
            if exe is None:
                missing.append(name)
                continue
            log_file = logs / f"{name.removeprefix('taskflow-')}.log"
            with log_file.open("wb") as log:
                proc = subprocess.Popen(
                    [exe],
                    env=dict(env),
                    cwd=self.repo,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                )
            self.services.append(Service(name, proc, log_file))
        self._update_state("services", {s.name: s.proc.pid for s in self.services})
        return missing

    def recorded_live_services(self) -> dict[str, int]:
        """Services that ``stack.json`` records and that still run: name -> PID.

        Another ``make run`` of this checkout serves them; a second one must not start
        beside it (it would truncate the shared logs and lose track of the first's PIDs).
        """
        recorded = self.load_state().get("services") or {}
        return {name: int(pid) for name, pid in recorded.items() if pid_alive(int(pid), name)}

    def dead_service(self) -> Service | None:
        """Return a started service that has exited, if any."""
        return next((s for s in self.services if s.proc.poll() is not None), None)

    def stop_services(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every service, wait up to ``grace`` s in all, SIGKILL the rest."""
        for svc in self.services:
            if svc.proc.poll() is None:
                svc.proc.terminate()
        deadline = time.monotonic() + grace
        for svc in self.services:
            try:
                svc.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{svc.name} did not stop within {grace:g} s; killing it")
                svc.proc.kill()
                svc.proc.wait()
        if self.services:
            self.services.clear()
            self._update_state("services", None)

    def close(self) -> None:
        """Stop services, then the servers this run started."""
        self.stop_services()
        self.stop_owned_servers()

    # ---- stop

    def stop_recorded(self) -> int:
        """Stop services and embedded servers recorded in ``stack.json`` that still run.

        Only the recorded PIDs are signalled, and only when the process still matches
        (a service's PID alone; a server's PID and its data/store directory). Returns
        how many processes were stopped.
        """
        state = self.load_state()
        stopped = 0
        for name, pid in (state.get("services") or {}).items():
            if pid_alive(int(pid), name):
                self.say(f"stopping {name} (pid {pid})")
                stop_pid(int(pid), STOP_GRACE_S)
                stopped += 1
        nats = state.get("nats") or {}
        if nats.get("pid") and pid_alive(int(nats["pid"]), str(nats.get("store_dir"))):
            self.say(f"stopping NATS (pid {nats['pid']})")
            stop_pid(int(nats["pid"]))
            stopped += 1
        pg = state.get("postgres") or {}
        if pg.get("data_dir"):
            server = PostgresServer(Path(pg["data_dir"]), port=int(pg.get("port") or 0))
            if server.running:
                self.say(f"stopping Postgres (pid {server.postmaster_pid()})")
                server.stop()
                stopped += 1
        state.pop("services", None)
        for key in ("nats", "postgres"):
            if key in state:
                state[key]["pid"] = None
        self.save_state(state)
        return stopped


def test_pg_dir(run_dir: Path) -> Path:
    """Where the test harness keeps its initdb'd Postgres cluster between runs."""
    return pg_work_dir(run_dir / "test-pg", "test-pg")


def test_pg_lock(run_dir: Path) -> Path:
    """The lock file a test session holds (``flock``) while it uses :func:`test_pg_dir`."""
    folder = test_pg_dir(run_dir)
    return folder.with_name(folder.name + ".lock")


def purge(stack: Stack) -> None:
    """Stop and delete the embedded Postgres clusters of this run dir (dev and test).

    Only folders inside the run dir or named ``taskflow-*`` (the /tmp fallbacks) are
    deleted, and the test cluster only when no test session holds its lock. The run
    dir itself is left to the caller (``make clean``).
    """
    recorded = (stack.load_state().get("postgres") or {}).get("data_dir")
    folders = [Path(recorded)] if recorded else []
    with contextlib.ExitStack() as held:
        lock_path = test_pg_lock(stack._run)
        lock = held.enter_context(lock_path.open("a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stack.say("a test session is using the test cluster; leaving it")
        else:
            folders.append(test_pg_dir(stack._run))
            held.callback(lock_path.unlink, missing_ok=True)  # runs before the close
        for folder in folders:
            if not (folder.is_relative_to(stack._run) or folder.name.startswith("taskflow-")):
                continue
            server = PostgresServer(folder)
            if server.running:
                stack.say(f"stopping Postgres in {folder}")
                server.stop(mode="immediate")
            if folder.exists():
                stack.say(f"removing {folder}")
                shutil.rmtree(folder, ignore_errors=True)


def health_ok(port: int, timeout: float = 2.0) -> bool:
    """Return True when ``GET http://127.0.0.1:<port>/api/v1/health`` answers 200."""
    url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class StopSignal:
    """Turn SIGINT/SIGTERM into an event the main loop polls (restored on exit)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return True once a stop was requested."""
        return self.event.wait(seconds)


_METRICS_PORTS = ("HTTP_PORT", "DLQ_HTTP_PORT", "WORKER_METRICS_PORT", "DISPATCHER_METRICS_PORT")


def _banner(stack: Stack, env: Mapping[str, str], missing: list[str]) -> str:
    api_up = "taskflow-ingest-api" not in missing
    api = f"http://127.0.0.1:{env['HTTP_PORT']}/api/v1"
    lines = ["", "TaskFlow dev stack is up."]
    if api_up:
        lines.append(f"  API:          {api}  (health: {api}/health)")
    if "taskflow-dlq-monitor" not in missing:
        lines.append(f"  DLQ monitor:  http://127.0.0.1:{env['DLQ_HTTP_PORT']}/console")
    metrics = [f"http://127.0.0.1:{env[k]}/metrics" for k in _METRICS_PORTS if env.get(k)]
    if metrics:
        lines.append(f"  Metrics:      {'  '.join(metrics)}")
    lines += [
        f"  Postgres:     {stack.database_url}",
        f"  NATS:         {stack.nats_url}",
        f"  Logs:         {stack._run / 'logs'}/*.log",
        "Other shells (js-info, taskflow-* commands, psql) need the same servers:",
        f"  export DATABASE_URL={stack.database_url} NATS_URL={stack.nats_url}",
    ]
    if api_up:
        body = '{"type": "demo", "payload": {"message": "hello"}}'
        lines += [
            "Try:",
            f"  curl -s -X POST {api}/tasks -H 'Content-Type: application/json' -d '{body}'",
        ]
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run(stack: Stack) -> int:
    """``make run``: servers, migrations, services; wait for the API; serve until a signal.

    Returns 0 after Ctrl-C/SIGTERM, 1 when a server or service fails to start or a
    service dies (its last log lines are printed).
    """
    live = stack.recorded_live_services()
    if live:
        pids = ", ".join(f"{name} pid {pid}" for name, pid in sorted(live.items()))
        stack.say(
            f"error: another `make run` of this checkout is serving ({pids}); "
            "stop it first (Ctrl-C in its terminal, or `make stop`)"
        )
        return 1
    with StopSignal() as stop:
        try:
            stack.ensure_servers()
            if stop.event.is_set():
                return 0
            stack.migrate()
            env = stack.service_env()
            missing = stack.start_services(env)
            for name in missing:
                stack.say(f"WARNING: {name} is not installed; not started (make install?)")
            api_up = "taskflow-ingest-api" not in missing
            if api_up and not _wait_healthy(stack, int(env["HTTP_PORT"]), stop):
                return 0 if stop.event.is_set() else 1
            print(_banner(stack, env, missing), file=stack.out, flush=True)
            while not stop.wait(0.25):
                dead = stack.dead_service()
                if dead is not None:
                    _report_death(stack, dead)
                    return 1
            stack.say("stopping")
            return 0
        except (DevStackError, OSError, asyncpg.PostgresError, migrate.MigrationError) as exc:
            stack.say(f"error: {exc}")
            return 1
        finally:
            stack.close()


def _wait_healthy(stack: Stack, port: int, stop: StopSignal) -> bool:
    stack.say(f"waiting for http://127.0.0.1:{port}{HEALTH_PATH}")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = stack.dead_service()
        if dead is not None:
            _report_death(stack, dead)
            return False
        if health_ok(port):
            return True
        if stop.wait(0.2):
            return False
    stack.say(f"the API did not answer 200 within {READY_TIMEOUT_S:g} s")
    for svc in stack.services:
        stack.say(f"--- last lines of {svc.log_file}:\n{svc.tail()}")
    return False


def _report_death(stack: Stack, svc: Service) -> None:
    stack.say(f"{svc.name} exited with code {svc.proc.returncode}; last lines of {svc.log_file}:")
    print(svc.tail(), file=stack.out, flush=True)


def serve_servers(stack: Stack, stdout: TextIO) -> int:
    """``servers``: ensure servers, database and schema; print the URLs; wait for a signal.

    Prints ``DATABASE_URL=...`` and ``NATS_URL=...`` lines on ``stdout`` (for
    ``eval``/``export``); returns 0 after Ctrl-C/SIGTERM, 1 if a server fails.
    """
    with StopSignal() as stop:
        try:
            stack.ensure_servers()
            stack.migrate()
            print(f"DATABASE_URL={stack.database_url}", file=stdout)
            print(f"NATS_URL={stack.nats_url}", file=stdout, flush=True)
            stack.say("servers running; Ctrl-C stops them")
            while not stop.wait(0.5):
                pass
            return 0
        except (DevStackError, OSError, asyncpg.PostgresError, migrate.MigrationError) as exc:
            stack.say(f"error: {exc}")
            return 1
        finally:
            stack.stop_owned_servers()


def migrate_only(stack: Stack) -> int:
    """``migrate``: ensure servers and database, apply migrations, stop what was started."""
    try:
        stack.ensure_servers()
        stack.migrate()
        return 0
    except (DevStackError, OSError, asyncpg.PostgresError, migrate.MigrationError) as exc:
        stack.say(f"error: {exc}")
        return 1
    finally:
        stack.stop_owned_servers()
