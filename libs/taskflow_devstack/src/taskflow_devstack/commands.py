"""The dev stack's subcommands on a :class:`~taskflow_devstack.stack.Stack`.

- :func:`run` (``make run``): servers, migrations, services; serve until a signal.
- :func:`serve_servers` (``make servers``): servers and migrations only.
- :func:`migrate_only` (``make migrate``): servers, database, migrations, then exit.
- :func:`purge` (``make clean``, ``stop --purge``): delete the embedded clusters.

Each returns the process exit code (0, or 1 with the reason printed) rather than
raising, and stops on the way out whatever it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from taskflow_common import migrate
from taskflow_devstack.errors import DevStackError
from taskflow_devstack.postgres import PostgresServer
from taskflow_devstack.rundir import test_pg_dir, test_pg_lock
from taskflow_devstack.stack import Service, Stack

HEALTH_PATH = "/api/v1/health"
READY_TIMEOUT_S = 60.0

# What a failed start raises: a server, the database or a migration.
_FAILURES = (DevStackError, OSError, asyncpg.PostgresError, migrate.MigrationError)
_PORT_VARS = ("HTTP_PORT", "DLQ_HTTP_PORT", "WORKER_METRICS_PORT", "DISPATCHER_METRICS_PORT")


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


def health_ok(port: int, timeout: float = 2.0) -> bool:
    """Return True when ``GET http://127.0.0.1:<port>/api/v1/health`` answers 200."""
    url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
        except _FAILURES as exc:
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


def _banner(stack: Stack, env: Mapping[str, str], missing: list[str]) -> str:
    api_up = "taskflow-ingest-api" not in missing
    api = f"http://127.0.0.1:{env['HTTP_PORT']}/api/v1"
    lines = ["", "TaskFlow dev stack is up."]
    if api_up:
        lines.append(f"  API:          {api}  (health: {api}/health)")
    if "taskflow-dlq-monitor" not in missing:
        lines.append(f"  DLQ monitor:  http://127.0.0.1:{env['DLQ_HTTP_PORT']}/console")
    metrics = [f"http://127.0.0.1:{env[k]}/metrics" for k in _PORT_VARS if env.get(k)]
    if metrics:
        lines.append(f"  Metrics:      {'  '.join(metrics)}")
    lines += [
        f"  Postgres:     {stack.database_url}",
        f"  NATS:         {stack.nats_url}",
        f"  Logs:         {stack.logs_dir}/*.log",
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
        except _FAILURES as exc:
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
    except _FAILURES as exc:
        stack.say(f"error: {exc}")
        return 1
    finally:
        stack.stop_owned_servers()


def purge(stack: Stack) -> None:
    """Stop and delete the embedded Postgres clusters of this run dir (dev and test).

    Only folders inside the run dir or named ``taskflow-*`` (the /tmp fallbacks) are
    deleted, and the test cluster only when no test session holds its lock. The run
    dir itself is left to the caller (``make clean``).
    """
    run_dir = stack.run_path
    recorded = (stack.state.load().get("postgres") or {}).get("data_dir")
    folders = [Path(recorded)] if recorded else []
    with contextlib.ExitStack() as held:
        lock_path = test_pg_lock(run_dir)
        lock = held.enter_context(lock_path.open("a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stack.say("a test session is using the test cluster; leaving it")
        else:
            folders.append(test_pg_dir(run_dir))
            held.callback(lock_path.unlink, missing_ok=True)  # runs before the close
        for folder in folders:
            if not (folder.is_relative_to(run_dir) or folder.name.startswith("taskflow-")):
                continue
            server = PostgresServer(folder)
            if server.running:
                stack.say(f"stopping Postgres in {folder}")
                server.stop(mode="immediate")
            if folder.exists():
                stack.say(f"removing {folder}")
                shutil.rmtree(folder, ignore_errors=True)
