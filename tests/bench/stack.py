"""The stack under test: servers (embedded or given), a throwaway database, the services.

:class:`BenchStack` starts an embedded Postgres and a ``nats-server`` with a monitoring
port in a temporary folder, unless ``DATABASE_URL`` / ``NATS_URL`` name servers to use;
either way it creates its own database (``taskflow_bench_<hex>``, migrated, dropped at
the end) and unique stream, consumer and subject names. Services run as processes via
:class:`tests.support.procs.ServiceFactory`; everything it started is stopped by PID.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from taskflow_devstack.database import migrate_database, quote_ident
from taskflow_devstack.servers import NatsServer, PostgresServer, free_port
from tests.bench.probes import find_listener
from tests.support.pg import admin_execute, dsn_for
from tests.support.procs import ServiceFactory, ServiceProcess

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = frozenset(
    ("ceiling", "burst", "batch", "paced", "scale", "drain", "rss", "schedules", "retention")
)
"""What ``BENCH_ONLY`` may name (comma-separated; default: all of them)."""


@dataclass
class BenchConfig:
    """Everything the environment may set (``BENCH_*``; see :func:`BenchConfig.from_env`)."""

    n: int = 10_000
    runs: int = 3
    concurrency: int = 50
    paced_rate: float = 200.0
    paced_seconds: float = 10.0
    batch_size: int = 100
    rss_tasks: int = 200_000
    settle_s: float = 11.0
    pg_fsync: bool = True
    log_level: str = "INFO"
    out: Path = REPO / ".bench" / "latest.json"
    profile: bool = False
    service_env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None
    nats_url: str | None = None
    nats_monitor_url: str | None = None
    only: frozenset[str] = SCENARIOS
    prune_rows: int = 1_000_000
    tick_seconds: float = 10.0

    def wants(self, scenario: str) -> bool:
        """Whether ``scenario`` (one of :data:`SCENARIOS`) runs (``BENCH_ONLY``)."""
        return scenario in self.only

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BenchConfig:
        """Read ``BENCH_N``, ``BENCH_RUNS``, ``BENCH_CONCURRENCY``, ``BENCH_PACED_RATE``,
        ``BENCH_PACED_SECONDS``, ``BENCH_BATCH_SIZE``, ``BENCH_RSS_TASKS`` (default 20 x
        N), ``BENCH_SETTLE_S``, ``BENCH_PG_FSYNC`` (on/off), ``BENCH_LOG_LEVEL``,
        ``BENCH_OUT``, ``BENCH_PROFILE`` (1: py-spy the burst), ``BENCH_SERVICE_ENV``
        (``K=V,K=V`` for the services), ``DATABASE_URL``, ``NATS_URL`` and
        ``BENCH_NATS_MONITOR_URL``; issue 15's ``BENCH_PRUNE_ROWS`` (1,000,000),
        ``BENCH_TICK_SECONDS`` (10) and ``BENCH_ONLY`` (e.g. ``schedules,retention``: only
        those scenarios, names in :data:`SCENARIOS`). Raises ``ValueError`` naming a
        malformed variable."""

        def num(name: str, default: float, kind: type[float] = int) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw.replace("_", ""))
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a number") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r}: must be > 0")
            return value

        n = int(num("BENCH_N", 10_000))
        service_env: dict[str, str] = {}
        for part in env.get("BENCH_SERVICE_ENV", "").replace(" ", ",").split(","):
            if part.strip():
                key, sep, value = part.strip().partition("=")
                if not sep:
                    raise ValueError(f"BENCH_SERVICE_ENV: {part!r} is not KEY=VALUE")
                service_env[key] = value
        only = frozenset(p.strip() for p in env.get("BENCH_ONLY", "").split(",") if p.strip())
        if only - SCENARIOS:
            unknown = ", ".join(sorted(only - SCENARIOS))
            raise ValueError(
                f"BENCH_ONLY: unknown {unknown} (known: {', '.join(sorted(SCENARIOS))})"
            )
        return cls(
            only=only or SCENARIOS,
            prune_rows=int(num("BENCH_PRUNE_ROWS", 1_000_000)),
            tick_seconds=float(num("BENCH_TICK_SECONDS", 10.0, float)),
            n=n,
            runs=int(num("BENCH_RUNS", 3)),
            concurrency=int(num("BENCH_CONCURRENCY", 50)),
            paced_rate=float(num("BENCH_PACED_RATE", 200.0, float)),
            paced_seconds=float(num("BENCH_PACED_SECONDS", 10.0, float)),
            batch_size=int(num("BENCH_BATCH_SIZE", 100)),
            rss_tasks=int(num("BENCH_RSS_TASKS", 20 * n)),
            settle_s=float(num("BENCH_SETTLE_S", 11.0, float)),
            pg_fsync=env.get("BENCH_PG_FSYNC", "on").lower() not in ("off", "0", "false", "no"),
            log_level=env.get("BENCH_LOG_LEVEL", "INFO") or "INFO",
            out=Path(env.get("BENCH_OUT") or REPO / ".bench" / "latest.json"),
            profile=env.get("BENCH_PROFILE", "") not in ("", "0"),
            service_env=service_env,
            database_url=env.get("DATABASE_URL") or None,
            nats_url=env.get("NATS_URL") or None,
            nats_monitor_url=env.get("BENCH_NATS_MONITOR_URL") or None,
        )


@dataclass
class BenchStack:
    """Servers, database and services of one bench run."""

    config: BenchConfig
    log_dir: Path
    base: Path | None = None
    pg: PostgresServer | None = None
    nats: NatsServer | None = None
    admin_url: str = ""
    database: str = ""
    database_url: str = ""
    nats_url: str = ""
    nats_monitor_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    services: ServiceFactory | None = None
    api: ServiceProcess | None = None
    dispatcher: ServiceProcess | None = None
    workers: list[ServiceProcess] = field(default_factory=list)
    worker_count: int = 0

    # ---- servers

    async def start_servers(self) -> None:
        """Start (or take) Postgres and NATS; create and migrate the bench database."""
        cfg = self.config
        if cfg.database_url is None or cfg.nats_url is None:
            self.base = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
            self.base.chmod(0o755)  # Postgres runs as nobody when we are root
        if cfg.database_url is None:
            assert self.base is not None
            self.pg = PostgresServer(self.base / "pg", fsync=cfg.pg_fsync)
            self.pg.start()
            self.admin_url = self.pg.url
        else:
            self.admin_url = cfg.database_url
        if cfg.nats_url is None:
            assert self.base is not None
            self.nats = NatsServer(
                self.base / "nats", monitor_port=free_port(), log_file=self.log_dir / "nats.log"
            )
            self.nats.start()
            self.nats_url = self.nats.url
            self.nats_monitor_url = f"http://127.0.0.1:{self.nats.monitor_port}"
        else:
            self.nats_url = cfg.nats_url
            self.nats_monitor_url = cfg.nats_monitor_url
        self.database = "taskflow_bench_" + secrets.token_hex(4)
        await admin_execute(self.admin_url, f"CREATE DATABASE {quote_ident(self.database)}")
        self.database_url = dsn_for(self.admin_url, self.database)
        await migrate_database(self.database_url, REPO / "migrations")
        tag = secrets.token_hex(4)
        self.env = {
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "NATS_STREAM_NAME": f"BENCH_{tag}",
            "NATS_CONSUMER_NAME": f"bench_{tag}",
            "NATS_SUBJECT_PREFIX": f"bench{tag}",
            "HTTP_PORT": str(free_port()),
            "LOG_LEVEL": cfg.log_level,
            **cfg.service_env,
        }

    @property
    def pg_port(self) -> int:
        """The Postgres server's port."""
        return urlsplit(self.database_url).port or 5432

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:<port>/api/v1``."""
        return f"http://127.0.0.1:{self.env['HTTP_PORT']}/api/v1"

    def pg_pid(self) -> int | None:
        """The postmaster's PID (embedded, or found by its listening port)."""
        if self.pg is not None:
            return self.pg.postmaster_pid()
        return find_listener(self.pg_port)

    def nats_pid(self) -> int | None:
        """nats-server's PID (embedded, or found by its listening port)."""
        if self.nats is not None:
            return self.nats.pid
        return find_listener(urlsplit(self.nats_url).port or 4222)

    # ---- services

    async def start_services(self) -> None:
        """Start the ingest API, the dispatcher and one worker; wait for each to be ready."""
        self.services = ServiceFactory(self.log_dir, cwd=REPO)
        self.api = await self.services.start("ingest-api", self.env, timeout=60)
        self.dispatcher = await self.services.start("dispatcher", self.env, timeout=60)
        await self.start_worker()

    async def start_worker(self, *, ready: bool = True) -> ServiceProcess:
        """Start one more worker process (``WORKER_ID`` bench-<n>)."""
        assert self.services is not None
        self.worker_count += 1
        env = {**self.env, "WORKER_ID": f"bench-{self.worker_count}"}
        proc = await self.services.start("worker", env, ready=ready, timeout=60)
        self.workers.append(proc)
        return proc

    async def stop_workers(self) -> None:
        """SIGTERM every running worker and wait for it (an idle worker exits at once)."""
        for w in self.workers:
            await w.stop(timeout=40)
        self.workers.clear()

    # ---- teardown

    async def close(self) -> None:
        """Stop the services, drop the database, stop servers we started, remove the folder."""
        if self.services is not None:
            await self.services.stop_all()
        try:
            if self.database:
                await admin_execute(
                    self.admin_url,
                    f"DROP DATABASE IF EXISTS {quote_ident(self.database)} WITH (FORCE)",
                )
        except Exception as exc:  # a broken server must not stop the cleanup below
            print(f"bench: could not drop {self.database}: {exc!r}", file=sys.stderr)
        finally:
            if self.nats is not None:
                self.nats.stop()
            if self.pg is not None:
                self.pg.stop(mode="immediate")
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
