"""What the bench reads from outside the services: counters, CPU, memory. No code in them.

- :class:`PgProbe` holds the bench's one connection to its database. It reads
  ``pg_stat_database`` (transactions; Postgres flushes these from each backend at most
  once a second, and from an idle backend only after up to 10 s, so deltas need a
  settle period), the next transaction id (write transactions, live), ``pg_stat_user_tables``
  (row writes, flushed like the first) and ``pg_stat_statements`` when the server has it.
  It counts its own queries so they can be subtracted.
- :func:`pg_request_flights` counts **round trips** as the kernel sees them: the
  data-carrying TCP segments each client sent to Postgres (``ss -ti``'s
  ``data_segs_in`` on the server's sockets; asyncpg writes a whole request such as
  Bind/Execute/Sync in one segment, and a new connection's start-up costs a few),
  excluding the bench's own connection. Live, no flush lag.
- :func:`nats_varz` reads ``in_msgs``/``out_msgs`` from nats-server's monitoring port.
- :class:`CpuProbe` sums user+system CPU seconds of named process groups with psutil;
  for Postgres the postmaster, its live children and its reaped children.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil

_SEGS = re.compile(r"\bdata_segs_in:(\d+)")
_COUNTERS = (
    "SELECT d.xact_commit + d.xact_rollback AS xacts,"
    " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,"
    " (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint"
    "    FROM pg_stat_user_tables) AS tuple_writes,"
    " $statements AS statements"
    " FROM pg_stat_database d WHERE d.datname = current_database()"
)
_STATEMENT_CALLS = (
    "(SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s WHERE s.dbid = d.datid)"
)


@dataclass(frozen=True, slots=True)
class PgCounters:
    """One reading of the server's counters (see :class:`PgProbe`)."""

    xacts: int
    next_xid: int
    tuple_writes: int
    statements: int | None
    own_queries: int


class PgProbe:
    """The bench's own connection to its database: polling and counter snapshots."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.queries = 0
        self.has_statements = False
        sock = conn._transport.get_extra_info("sockname")
        self.local_port: int = sock[1]

    @classmethod
    async def open(cls, url: str) -> PgProbe:
        """Connect to ``url``; detect ``pg_stat_statements`` (usable only if preloaded)."""
        probe = cls(await asyncpg.connect(url))
        with contextlib.suppress(asyncpg.PostgresError):
            await probe.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await probe.conn.fetchval("SELECT count(*) FROM pg_stat_statements")
            probe.has_statements = True
        return probe

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()

    async def value(self, sql: str, *args: Any) -> Any:
        """Run one query (one transaction, counted) and return the first value."""
        self.queries += 1
        return await self.conn.fetchval(sql, *args)

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one query (counted) and return its rows."""
        self.queries += 1
        rows: list[asyncpg.Record] = await self.conn.fetch(sql, *args)
        return rows

    async def counters(self) -> PgCounters:
        """Read the counters in one statement (itself counted as one own query)."""
        statements = _STATEMENT_CALLS if self.has_statements else "NULL::bigint"
        sql = _COUNTERS.replace("$statements", statements)
        row = (await self.rows(sql))[0]
        return PgCounters(
            xacts=row["xacts"],
            next_xid=row["next_xid"],
            tuple_writes=row["tuple_writes"],
            statements=row["statements"],
            own_queries=self.queries,
        )

    async def server_version(self) -> str:
        """``SHOW server_version``."""
        return str(await self.value("SHOW server_version"))


def pg_request_flights(port: int, exclude_ports: Sequence[int] = ()) -> int | None:
    """Sum ``data_segs_in`` over established TCP sockets whose local port is ``port``.

    Returns None when ``ss`` is missing or shows no socket (e.g. a remote server).
    """
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    found = False
    skip = False
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            # The socket line: Recv-Q Send-Q Local Peer; the info line follows it.
            fields = line.split()
            peer = fields[-1] if fields else ""
            skip = any(peer.endswith(f":{p}") for p in exclude_ports)
            continue
        match = _SEGS.search(line)
        if match and not skip:
            total += int(match.group(1))
            found = True
    return total if found else None


def nats_varz(monitor_url: str | None) -> dict[str, Any] | None:
    """GET ``<monitor_url>/varz``; None when there is no monitoring endpoint."""
    if not monitor_url:
        return None
    try:
        with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as resp:  # noqa: S310 - loopback
            data: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def cpu_seconds(pid: int, *, with_children: bool = False) -> tuple[float, float, int]:
    """``(user + system, system)`` CPU seconds of ``pid`` and its context switches
    (voluntary + involuntary); zeros if gone.

    With ``with_children`` add its live descendants and the CPU of children it has
    reaped (Postgres backends that exited; their context switches are lost).
    """
    proc = _proc(pid)
    if proc is None:
        return 0.0, 0.0, 0
    procs = [proc]
    try:
        t = proc.cpu_times()
        total: float = t.user + t.system
        system: float = t.system
        if with_children:
            total += t.children_user + t.children_system
            system += t.children_system
            procs += proc.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0, 0
    switches = 0
    for i, p in enumerate(procs):
        with contextlib.suppress(psutil.Error):
            if i:
                ct = p.cpu_times()
                total += ct.user + ct.system
                system += ct.system
            switches += context_switches(p.pid)
    return total, system, switches


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` (0 if gone).

    ``/proc/<pid>/status`` (what psutil reads) counts the main thread only, which in
    nats-server (Go) is nearly idle; each ``/proc/<pid>/task/<tid>/status`` has its own.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as status:
            for line in status:
                if "ctxt_switches:" in line:  # voluntary_... and nonvoluntary_...
                    total += int(line.split(":", 1)[1])
    return total


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid``, or None when it is gone."""
    proc = _proc(pid)
    if proc is None:
        return None
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return None


class CpuProbe:
    """CPU seconds of named process groups: ``{"api": [pid], "worker": [pid, pid], ...}``.

    Groups in ``trees`` (Postgres) also count their children.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]], trees: Sequence[str] = ()) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self.trees = set(trees)

    def snapshot(self) -> dict[str, float]:
        """Return ``{group: cpu seconds, "<group>:sys": kernel part, "<group>:cs": context
        switches}`` now, plus
        ``machine_busy`` (all CPUs, all processes) and ``machine_irq`` (interrupts)."""
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            times = [cpu_seconds(p, with_children=name in self.trees) for p in pids]
            out[name] = sum(t[0] for t in times)
            out[f"{name}:sys"] = sum(t[1] for t in times)
            out[f"{name}:cs"] = sum(t[2] for t in times)
        t = psutil.cpu_times()
        out["machine_busy"] = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
        # Interrupt time is not charged to any process (loopback TCP's receive side runs
        # largely in softirq), so it is reported on its own.
        out["machine_irq"] = t.irq + t.softirq
        return out


def find_listener(port: int) -> int | None:
    """PID of the process listening on 127.0.0.1:``port``, if this machine has one."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid else None
    return None
