"""Ports and processes for the embedded servers: free ports, readiness, stop by PID.

Everything here acts on 127.0.0.1 and on processes by PID, never by name: the stack
and the tests only ever signal processes they started (or recorded) themselves.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

HOST = "127.0.0.1"
POLL_S = 0.02  # readiness polling interval, seconds


# Listening ports are drawn below Linux's default ephemeral range (32768-60999): a port
# that bind(0) hands out can be taken a moment later by some process's outgoing
# connection, and then the server we start on it fails with "address already in use".
_LISTEN_PORTS = (20000, 32767)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    Drawn at random from 20000-32767, outside the ephemeral range the kernel uses for
    outgoing connections, and checked bindable. Another listener may still take it
    before the caller binds (unlikely), so callers that start a server report the clash.
    """
    for _ in range(200):
        port = random.randint(*_LISTEN_PORTS)
        if port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Return True when ``port`` can be bound on 127.0.0.1 (no listener on it or on 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def preferred_port(port: int) -> int:
    """Return ``port`` if it is free on 127.0.0.1, else a free port chosen by the OS."""
    return port if port_is_free(port) else free_port()


def wait_for_tcp(port: int, timeout: float, *, alive: Callable[[], bool] | None = None) -> bool:
    """Poll until 127.0.0.1:``port`` accepts a connection; return False after ``timeout`` s.

    ``alive`` (optional, no arguments) is checked between attempts; when it returns
    False the wait ends early with False (the server process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            pass
        if (alive is not None and not alive()) or time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def tail_file(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of the text file at ``path`` ('' if missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Return True if ``pid`` runs (not a zombie) and, given ``marker``, its argv mentions it.

    The marker (a data or store directory) guards against a recycled PID.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker is None or any(marker in arg for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL it. A gone PID is fine.

    A zombie counts as gone: when ``pid`` is another process's child (``make stop``
    while ``make servers`` still runs), only that parent can reap it.
    """
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        if not _ended(proc, timeout):
            proc.kill()
            _ended(proc, 5.0)
    except psutil.NoSuchProcess:
        pass


def _ended(proc: psutil.Process, timeout: float) -> bool:
    """Poll until ``proc`` has exited or is a zombie; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                proc.wait(0)  # reaps it when it is our own child; a no-op otherwise
                return True
        except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _thread_states(pid: int) -> list[str]:
    """Return the state letter of each thread of ``pid`` (Linux /proc; [] if unknown)."""
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        with contextlib.suppress(OSError, IndexError):
            # Format: "tid (comm) S ...": the state follows the last ')'.
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def stop_processes(pids: list[int], timeout: float = 5.0) -> None:
    """SIGSTOP ``pids`` and wait until every thread of each is stopped.

    ``kill()`` returns before a busy thread on another core has stopped; a test that
    freezes a server must not race with the server's last few microseconds of work.
    """
    signal_all(pids, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            states = _thread_states(pid)
            if all(state in "TtZX" for state in states):
                break
            time.sleep(0.005)


def descendants(pid: int) -> list[int]:
    """Return the PIDs of every child of ``pid``, recursively ([] when ``pid`` is gone)."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def proc_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
