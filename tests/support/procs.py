"""TaskFlow services as real subprocesses, for end-to-end and fault tests.

A service is started as ``[sys.executable, "-m", "taskflow_<name>"]`` with the test's
environment; stdout and stderr go to one log file under the test's tmp dir. Readiness is
the JSON log line ``{"event": "service_ready", ...}`` the service prints on stderr.
:class:`ServiceFactory` (the ``services`` fixture) stops everything it started at
teardown, kills leftovers by PID, and then checks how each one ended (exit code, ERROR
and Traceback lines in its log; see :mod:`tests.support.exits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import psutil  # type: ignore[import-untyped]

from taskflow_common.config import CommonSettings
from tests.support import exits
from tests.support.waiting import wait_for

READY_EVENT = "service_ready"

# Variables a developer's shell may carry that must not leak into a test's service:
# every CommonSettings variable plus the HTTP ports. A test passes the ones it wants.
_SCRUBBED = {f.alias for f in CommonSettings.model_fields.values() if f.alias} | {
    "HTTP_PORT",
    "DLQ_HTTP_PORT",
    "WORKER_METRICS_PORT",
    "DISPATCHER_METRICS_PORT",
}
# Metrics ports default to fixed ones (9101/9102); several workers of one test, or tests
# running side by side, would collide there: each takes a free port unless a test says.
_DEFAULTS = {"WORKER_METRICS_PORT": "0", "DISPATCHER_METRICS_PORT": "0"}


def module_for(name: str) -> str:
    """Map ``worker`` / ``ingest-api`` / ``taskflow_worker`` to the module to run with -m."""
    if name.startswith("taskflow_"):
        return name
    return "taskflow_" + name.replace("-", "_")


class ServiceProcess:
    """One service subprocess with its log file.

    ``argv`` defaults to ``[sys.executable, "-m", module_for(name)]``. ``env`` is laid
    over the current environment minus TaskFlow's own variables (see ``_SCRUBBED``).
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        argv: Sequence[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv) if argv else [sys.executable, "-m", module_for(name)]
        base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        self.env = {**base, "PYTHONUNBUFFERED": "1", **_DEFAULTS, **env}
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        # How it ended, for the teardown check (tests.support.exits).
        self.expected_exit: str | None = None
        self.exit_seen = False
        self.forced = False
        self.died_by_itself = False
        self.terminated = False  # SIGTERM sent (by the test or by stop())
        self.stop_timeout_s = 10.0
        self.allowed: list[exits.Allowance] = []

    def expect_exit(self, reason: str) -> None:
        """Say that this process may end with any code (the test makes it die): why."""
        if not reason.strip():
            raise ValueError("expect_exit needs a reason")
        self.expected_exit = reason

    def allow_log(self, pattern: str, reason: str) -> None:
        """Accept ERROR/Traceback lines of this process matching ``pattern`` (a regex)."""
        self.allowed.append(exits.Allowance.of(pattern, reason))

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.pid} rc={self.returncode}>"

    # ---- state

    @property
    def pid(self) -> int | None:
        """The process id once started."""
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running (or not started)."""
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        """True between start and exit."""
        return self.proc is not None and self.proc.poll() is None

    # ---- lifecycle

    def start(self) -> Self:
        """Spawn the process (its own session, so terminal signals do not reach it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ``service_ready`` log event; return it.

        Raises ``AssertionError`` with the log tail if the process exits first or the
        event does not appear within ``timeout`` seconds.
        """

        def ready() -> dict[str, Any] | None:
            found = self.events(READY_EVENT)
            if found:
                return found[-1]
            if not self.running:
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before {READY_EVENT}:\n"
                    f"{self.tail()}"
                )
            return None

        try:
            event = await wait_for(ready, timeout, what=f"{self.name} {READY_EVENT}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.log_path}:\n{self.tail()}") from None
        assert event is not None
        return event

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process (ignored once it has exited)."""
        if self.running and self.proc is not None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM: ask for a graceful shutdown."""
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up (so its exit code is not checked)."""
        if self.expected_exit is None:
            self.expected_exit = "killed by the test (SIGKILL)"
        self.send(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: freeze the process (e.g. a worker holding a lease)."""
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.send(signal.SIGCONT)

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for the exit; return the code (negative: killed by signal).

        The caller owns the code from here (it asserts on it): the teardown check does
        not judge it again. Raises ``AssertionError`` if it is still running at the
        deadline.
        """
        code = await self._wait(timeout)
        self.exit_seen = True
        return code

    async def _wait(self, timeout: float) -> int:
        await wait_for(lambda: not self.running, timeout, what=f"{self.name} to exit")
        assert self.proc is not None
        return self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, SIGKILL if needed; return the exit code.

        The code is still checked at teardown (unless the caller asserts on it and
        says so with :meth:`wait` or :meth:`expect_exit`): a stop must be clean.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            # Exited before this stop: by itself, unless it was told to (or killed).
            self.died_by_itself = not self.terminated and self.expected_exit is None
            return self.proc.returncode
        self.stop_timeout_s = timeout
        self.resume()  # a stopped process cannot act on SIGTERM
        self.terminate()
        try:
            return await self._wait(timeout)
        except AssertionError:
            self.forced = True
            self.cleanup()
            return self.proc.wait()

    def problems(self, allowed: Sequence[exits.Allowance] = ()) -> str | None:
        """How this process ended, if wrong (exit code, unallowed ERROR lines), else None."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            note: str | None = "still running at the check"
        else:
            note = exits.exit_problem(
                self.proc.returncode,
                expected=self.expected_exit,
                seen=self.exit_seen,
                forced=self.forced,
                died_by_itself=self.died_by_itself,
                timeout_s=self.stop_timeout_s,
            )
        rules = [*allowed, *self.allowed]
        lines = exits.error_lines(self.logs(), rules)
        if note is None and not lines:
            return None
        return exits.describe(self.name, self.pid, str(self.log_path), note, lines, rules)

    def cleanup(self) -> None:
        """Kill the process and any children it left, by PID. Safe to call repeatedly."""
        if self.proc is None:
            return
        pids: list[int] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            pids = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        for pid in [self.proc.pid, *pids]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    # ---- logs

    def logs(self) -> str:
        """The whole log so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.logs().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON-object log line, parsed, in order (other lines are skipped)."""
        events: list[dict[str, Any]] = []
        for line in self.logs().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
        return events

    def events(self, event: str) -> list[dict[str, Any]]:
        """The parsed log lines whose ``"event"`` is ``event``."""
        return [e for e in self.log_events() if e.get("event") == event]


class ServiceFactory:
    """Starts services for one test and stops them all at teardown (the ``services`` fixture).

    Log files are ``<log_dir>/<name>-<n>.log``.
    """

    def __init__(self, log_dir: Path, cwd: Path | None = None) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.started: list[ServiceProcess] = []
        self.allowed: list[exits.Allowance] = []
        self._later: list[tuple[str, exits.Allowance]] = []
        self._exits: list[tuple[str | None, str]] = []

    def expect_exits(self, reason: str, *, service: str | None = None) -> None:
        """Let every process of this test (or of ``service``) end with any exit code.

        For tests whose processes die by design (a handler that kills its worker);
        ``reason`` says why. Their logs are still checked.
        """
        if not reason.strip():
            raise ValueError("expect_exits needs a reason")
        self._exits.append((service, reason))
        for proc in self.started:
            if service in (None, proc.name):
                proc.expect_exit(reason)

    def allow(self, pattern: str, reason: str, *, service: str | None = None) -> None:
        """Accept ERROR/Traceback lines matching ``pattern`` (a regex) in this test's logs.

        For every service of the test, or only those named ``service`` (``worker``...).
        The test causes these errors on purpose; ``reason`` says how.
        """
        rule = exits.Allowance.of(pattern, reason)
        if service is None:
            self.allowed.append(rule)
            return
        for proc in self.started:
            if proc.name == service:
                proc.allowed.append(rule)
        self._later.append((service, rule))

    async def start(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        ready: bool = True,
        timeout: float = 30.0,
        argv: Sequence[str] | None = None,
    ) -> ServiceProcess:
        """Start service ``name`` (``worker``, ``ingest-api``...) with ``env``.

        With ``ready`` (default) waits up to ``timeout`` s for ``service_ready``.
        """
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        proc = ServiceProcess(name, env, log_path, argv=argv, cwd=self.cwd)
        proc.allowed += [rule for svc, rule in self._later if svc == name]
        for svc, reason in self._exits:
            if svc in (None, name):
                proc.expect_exit(reason)
        self.started.append(proc.start())
        if ready:
            await proc.wait_ready(timeout)
        return proc

    async def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every started service concurrently (SIGTERM, then SIGKILL), then clean up."""
        try:
            await asyncio.gather(*(p.stop(timeout) for p in self.started))
        finally:
            for proc in self.started:
                proc.cleanup()

    def verify(self) -> None:
        """Raise ``AssertionError`` naming each service that ended badly, with its lines.

        Call after :meth:`stop_all` (the ``services`` fixture does, at teardown).
        """
        found = [p.problems(self.allowed) for p in self.started]
        bad = [f for f in found if f]
        if bad:
            raise AssertionError(
                "a service ended badly (tests/support/exits.py; a test that causes these "
                "on purpose declares them with services.allow(pattern, reason) or "
                "proc.expect_exit(reason)):\n" + "\n".join(bad)
            )

    def report(self) -> str:
        """Each service's exit code and log tail (printed at teardown; shown on failure)."""
        return "\n".join(
            f"--- {p.name} pid={p.pid} rc={p.returncode} {p.log_path}\n{p.tail()}"
            for p in self.started
        )
