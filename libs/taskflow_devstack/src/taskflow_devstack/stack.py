"""The one-command dev stack behind ``make run``: servers, migrations, services.

:class:`Stack` uses ``DATABASE_URL`` / ``NATS_URL`` when given, otherwise starts an
embedded Postgres (``.run/pg``) and NATS (``.run/nats``) on the preferred ports 15432 and
14222 (or free ones, so nothing clashes with a machine's own 5432/4222). What it started,
and on which ports, is recorded in ``.run/stack.json`` (:class:`~taskflow_devstack.rundir.
StateFile`): a second run reuses servers still running from the first, and ``stop`` stops
them by the recorded PIDs. Servers a run adopted are left running at its end; servers it
started are stopped. The subcommands built on it are in :mod:`taskflow_devstack.commands`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from taskflow_devstack.database import ensure_database, migrate_database, quote_ident
from taskflow_devstack.postgres import PostgresServer, pg_work_dir
from taskflow_devstack.processes import pid_alive, preferred_port, stop_pid, tail_file
from taskflow_devstack.rundir import StateFile, find_repo, test_pg_dir, test_pg_lock
from taskflow_devstack.servers import NatsServer

# Imported from here before the database and run-folder helpers had modules of their own.
__all__ = [
    "Service",
    "Stack",
    "ensure_database",
    "find_repo",
    "migrate_database",
    "quote_ident",
    "test_pg_dir",
    "test_pg_lock",
]

PG_PORT = 15432
NATS_PORT = 14222
HTTP_PORT = 8080
DLQ_HTTP_PORT = 8081
WORKER_METRICS_PORT = 9101
DISPATCHER_METRICS_PORT = 9102
DATABASE = "taskflow"
STOP_GRACE_S = 15.0

# Long-running services started by `run`, in start order (js-info is a CLI, not started).
SERVICES = ("taskflow-ingest-api", "taskflow-dispatcher", "taskflow-worker", "taskflow-dlq-monitor")


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
    state: StateFile = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = (self.run_dir or self.repo / ".run").resolve()
        self.state = StateFile(self.run_dir)

    @property
    def run_path(self) -> Path:
        """The run folder (``run_dir``, resolved; ``<repo>/.run`` by default)."""
        assert self.run_dir is not None
        return self.run_dir

    @property
    def logs_dir(self) -> Path:
        """``<run_dir>/logs``: one ``<service>.log`` per service, and ``nats.log``."""
        return self.run_path / "logs"

    def say(self, text: str) -> None:
        """Print a progress line for the developer."""
        print(f"devstack: {text}", file=self.out, flush=True)

    # ---- servers

    def ensure_servers(self) -> None:
        """Set ``database_url`` / ``nats_url``: from the environment, or embedded servers.

        Adopts embedded servers recorded in ``stack.json`` that still run, otherwise
        starts them. Creates the ``taskflow`` database when missing. Raises
        :class:`~taskflow_devstack.errors.DevStackError` when a server cannot start.
        """
        with self.state.lock():
            state = self.state.load()
            self.database_url = self.environ.get("DATABASE_URL") or self._ensure_pg(state)
            self.nats_url = self.environ.get("NATS_URL") or self._ensure_nats(state)
        asyncio.run(ensure_database(self.database_url))

    def _ensure_pg(self, state: dict[str, Any]) -> str:
        rec = state.get("postgres") or {}
        data_dir = Path(rec.get("data_dir") or pg_work_dir(self.run_path / "pg", "pg"))
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
        self.state.update("postgres", rec)
        return pg.dsn(DATABASE)

    def _ensure_nats(self, state: dict[str, Any]) -> str:
        rec = state.get("nats") or {}
        store = self.run_path / "nats"
        nats = NatsServer(
            store,
            port=int(rec.get("port") or NATS_PORT),
            log_file=self.logs_dir / "nats.log",
        )
        if rec.get("pid") and nats.adopt(int(rec["pid"])):
            self.say(f"reusing NATS on port {nats.port}")
        else:
            nats.port = preferred_port(nats.port)
            self.say(f"starting NATS on port {nats.port}")
            nats.start()
            self._owned.append(nats)
        self.state.update("nats", {"store_dir": str(store), "port": nats.port, "pid": nats.pid})
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
            self.state.update(key, {**self.state.load().get(key, {}), "pid": None})
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
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            exe = shutil.which(name, path=scripts)
            if exe is None:
                missing.append(name)
                continue
            log_file = self.logs_dir / f"{name.removeprefix('taskflow-')}.log"
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
        self.state.update("services", {s.name: s.proc.pid for s in self.services})
        return missing

    def recorded_live_services(self) -> dict[str, int]:
        """Services that ``stack.json`` records and that still run: name -> PID.

        Another ``make run`` of this checkout serves them; a second one must not start
        beside it (it would truncate the shared logs and lose track of the first's PIDs).
        """
        recorded = self.state.load().get("services") or {}
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
            self.state.update("services", None)

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
        state = self.state.load()
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
        self.state.save(state)
        return stopped
