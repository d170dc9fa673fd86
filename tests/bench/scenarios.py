"""The scenarios of issue 5, each returning plain figures (numbers keyed by name).

Tasks of a scenario are the rows created after a mark taken on the database clock just
before it starts (scenarios run one at a time and nothing else submits), so nothing is
added to the tasks or the requests to tell runs apart. Throughput is timed on the
database clock too: from the first task's ``created_at`` to the last ``finished_at``.

Every wait is bounded (:class:`BenchError` when a deadline passes or a task fails).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.bench import cost
from tests.bench.loadgen import percentile
from tests.bench.probes import CpuProbe, PgProbe, rss_bytes
from tests.bench.stack import BenchStack

TASK_BODY = '{"type":"demo"}'
POLL_S = 0.1


class BenchError(RuntimeError):
    """A scenario could not finish (deadline, failed task, load generator errors)."""


def say(text: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_loadgen(
    url: str, body: str, requests: int, concurrency: int, *, rate: float | None = None
) -> dict[str, Any]:
    """Run ``tests.bench.loadgen run`` as its own process; return its JSON summary.

    Raises :class:`BenchError` unless every request was answered 2xx.
    """
    argv = [sys.executable, "-m", "tests.bench.loadgen", "run", "--url", url, "--body", body]
    argv += ["--requests", str(requests), "--concurrency", str(concurrency)]
    if rate:
        argv += ["--rate", str(rate)]
    timeout = 60 + requests / (rate or 100)
    argv += ["--timeout", str(timeout)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"load generator did not finish within {timeout + 30:g} s") from None
    try:
        summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"load generator failed: {err.decode()[-2000:]}") from None
    ok = sum(v for k, v in summary["status"].items() if k.startswith("2"))
    if ok != requests:
        raise BenchError(f"load generator: {ok}/{requests} answered 2xx: {summary}")
    return summary


def post_json(url: str, body: bytes, timeout: float = 10.0) -> int:
    """POST ``body`` once (stdlib client); return the status code."""
    req = urllib.request.Request(  # noqa: S310 - loopback URL built by the bench
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Scenarios:
    """Runs scenarios against one :class:`BenchStack` through one :class:`PgProbe`."""

    stack: BenchStack
    db: PgProbe
    batch_available: bool = False

    @property
    def cfg(self) -> Any:
        return self.stack.config

    # ---- helpers

    async def mark(self) -> dt.datetime:
        """The database clock now (tasks created from here on belong to the scenario)."""
        value: dt.datetime = await self.db.value("SELECT clock_timestamp()")
        return value

    async def wait_finished(
        self, mark: dt.datetime, n: int, timeout: float, column: str = "completed"
    ) -> None:
        """Poll until ``n`` tasks created since ``mark`` are completed (or dispatched).

        ``column="dispatched"`` waits for the dispatcher to have published them instead.
        Raises :class:`BenchError` if a task failed or ``timeout`` s pass.
        """
        if column == "dispatched":
            sql = "SELECT count(*) FILTER (WHERE NOT dispatch_pending), 0 FROM tasks"
        else:
            sql = (
                "SELECT count(*) FILTER (WHERE status = 'completed'),"
                " count(*) FILTER (WHERE status IN ('failed', 'cancelled', 'retrying'))"
                " FROM tasks"
            )
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            row = (await self.db.rows(sql + " WHERE created_at >= $1", mark))[0]
            done, bad = row[0], row[1]
            if bad:
                raise BenchError(f"{bad} tasks failed or were retried; see {self.stack.log_dir}")
            if done >= n:
                return
            await asyncio.sleep(POLL_S)  # polling interval of the bench
        raise BenchError(f"only {done}/{n} tasks {column} after {timeout:g} s")

    async def span(self, mark: dt.datetime) -> dict[str, float]:
        """Count and timing of the tasks created since ``mark`` (database clock)."""
        row = (
            await self.db.rows(
                "SELECT count(*) AS n,"
                " extract(epoch FROM max(t.finished_at) - min(t.created_at))::float8 AS total_s,"
                " extract(epoch FROM max(t.finished_at) - min(e.started_at))::float8 AS run_s"
                " FROM tasks t JOIN task_executions e ON e.task_id = t.id AND e.attempt = 1"
                " WHERE t.created_at >= $1",
                mark,
            )
        )[0]
        return {"n": row["n"], "total_s": row["total_s"], "run_s": row["run_s"]}

    def timeout_for(self, n: int) -> float:
        """A generous bound for ``n`` tasks: 60 s plus 20 ms per task."""
        return 60.0 + n * 0.02

    async def submit(self, n: int, *, batch: bool = False) -> dict[str, Any]:
        """Submit ``n`` no-op tasks at the bench concurrency (singly or in batches)."""
        cfg = self.cfg
        if not batch:
            return await run_loadgen(f"{self.stack.api_url}/tasks", TASK_BODY, n, cfg.concurrency)
        size = cfg.batch_size
        if n % size:
            raise BenchError(f"BENCH_N={n} must be a multiple of BENCH_BATCH_SIZE={size}")
        body = '{"tasks":[' + ",".join([TASK_BODY] * size) + "]}"
        return await run_loadgen(
            f"{self.stack.api_url}/tasks/batch", body, n // size, cfg.concurrency
        )

    async def detect_batch(self) -> bool:
        """True when ``POST /tasks/batch`` creates tasks (201); it creates one no-op task."""
        status = await asyncio.to_thread(
            post_json,
            f"{self.stack.api_url}/tasks/batch",
            b'{"tasks":[' + TASK_BODY.encode() + b"]}",
        )
        self.batch_available = status in (200, 201)
        return self.batch_available

    def cpu_probe(self) -> CpuProbe:
        """CPU groups of this stack (see :func:`tests.bench.cost.cpu_probe`)."""
        return cost.cpu_probe(self.stack)

    # ---- scenarios

    async def ceiling(self, noop_url: str) -> dict[str, float]:
        """The load generator alone against the no-op server."""
        n = max(self.cfg.n, 20_000)
        lg = await run_loadgen(noop_url, TASK_BODY, n, self.cfg.concurrency)
        return {
            "loadgen_ceiling_req_per_s": lg["req_per_s"],
            "loadgen_cpu_s_per_1000_req": lg["cpu_s"] / n * 1000,
        }

    async def burst(self, *, batch: bool = False, cost: bool = False) -> dict[str, float]:
        """N tasks submitted at concurrency 50 with the workers running; tasks/s.

        With ``cost``: Postgres, NATS and CPU counters around it (see :meth:`_cost`).
        """
        n = self.cfg.n
        before = await self._counters() if cost else None
        mark = await self.mark()
        lg = await self.submit(n, batch=batch)
        await self.wait_finished(mark, n, self.timeout_for(n))
        span = await self.span(mark)
        prefix = "batch_burst" if batch else "burst"
        out = {
            f"{prefix}_tasks_per_s": n / span["total_s"],
            f"{prefix}_submit_req_per_s": lg["req_per_s"],
            f"{prefix}_http_p50_ms": lg["latency_ms"]["p50"],
            f"{prefix}_http_p99_ms": lg["latency_ms"]["p99"],
        }
        if before is not None:
            out.update(await self._cost(before, n, lg))
        return out

    async def drain(self) -> dict[str, float]:
        """N tasks queued (and published) with no worker, then one worker started.

        The backlog is submitted half in single POSTs, half in batches, each half timed:
        ``intake_single_tasks_per_s`` and ``intake_batch_tasks_per_s`` are the tasks the
        API accepted per second (answers received, load generator's wall clock) while no
        worker ran (the dispatcher publishes meanwhile), and ``intake_batch_speedup``
        their ratio: what a client gains by batching (issue 6). Without the batch
        endpoint, or when N/2 is not a multiple of the batch size, all of it goes in
        single POSTs and only the single figure is given.
        """
        n = self.cfg.n
        await self.stack.stop_workers()
        mark = await self.mark()
        half = n // 2
        intake: dict[str, float] = {}
        if self.batch_available and half and half % self.cfg.batch_size == 0 and n == 2 * half:
            single = await self.submit(half)
            batched = await self.submit(half, batch=True)
            intake["intake_single_tasks_per_s"] = single["req_per_s"]
            intake["intake_batch_tasks_per_s"] = batched["req_per_s"] * self.cfg.batch_size
            intake["intake_batch_speedup"] = (
                intake["intake_batch_tasks_per_s"] / intake["intake_single_tasks_per_s"]
            )
        else:
            intake["intake_single_tasks_per_s"] = (await self.submit(n))["req_per_s"]
        await self.wait_finished(mark, n, self.timeout_for(n), column="dispatched")
        spawned = await self.mark()
        await self.stack.start_worker(ready=False)
        await self.wait_finished(mark, n, self.timeout_for(n))
        span = await self.span(mark)
        wall = await self.db.value(
            "SELECT extract(epoch FROM max(finished_at) - $2::timestamptz)::float8"
            " FROM tasks WHERE created_at >= $1",
            mark,
            spawned,
        )
        return {
            "drain_tasks_per_s": n / span["run_s"],
            "drain_from_spawn_tasks_per_s": n / wall,
            **intake,
        }

    async def paced(self) -> dict[str, float]:
        """``paced_rate`` tasks/s for ``paced_seconds``: submit->start and ->completed."""
        cfg = self.cfg
        n = max(1, round(cfg.paced_rate * cfg.paced_seconds))
        mark = await self.mark()
        lg = await run_loadgen(
            f"{self.stack.api_url}/tasks", TASK_BODY, n, cfg.concurrency, rate=cfg.paced_rate
        )
        await self.wait_finished(mark, n, self.timeout_for(n))
        rows = await self.db.rows(
            "SELECT extract(epoch FROM e.started_at - t.created_at)::float8 * 1000 AS start_ms,"
            " extract(epoch FROM t.finished_at - t.created_at)::float8 * 1000 AS done_ms"
            " FROM tasks t JOIN task_executions e ON e.task_id = t.id AND e.attempt = 1"
            " WHERE t.created_at >= $1",
            mark,
        )
        start = sorted(r["start_ms"] for r in rows)
        done = sorted(r["done_ms"] for r in rows)
        out = {f"paced_start_{q}_ms": percentile(start, p) for q, p in _QUANTILES}
        out |= {f"paced_done_{q}_ms": percentile(done, p) for q, p in _QUANTILES}
        out["paced_http_p50_ms"] = lg["latency_ms"]["p50"]
        out["paced_http_p99_ms"] = lg["latency_ms"]["p99"]
        out["paced_late_sends"] = float(lg["late_sends"])
        return out

    async def rss_growth(self) -> dict[str, float]:
        """A fresh worker runs ``rss_tasks`` tasks; its RSS after 10 % vs after 100 %."""
        total = self.cfg.rss_tasks
        await self.stack.stop_workers()
        worker = await self.stack.start_worker()
        assert worker.pid is not None
        mark = await self.mark()
        load = asyncio.create_task(
            run_loadgen(f"{self.stack.api_url}/tasks", TASK_BODY, total, self.cfg.concurrency)
        )
        samples: dict[int, int] = {}
        step = max(1, total // 10)
        deadline = time.monotonic() + self.timeout_for(total)
        try:
            while time.monotonic() < deadline:
                done = await self.db.value(
                    "SELECT count(*) FROM tasks WHERE status = 'completed' AND created_at >= $1",
                    mark,
                )
                tenth = min(10, done // step)
                if tenth >= 1 and tenth not in samples:
                    rss = rss_bytes(worker.pid)
                    if rss is None:
                        raise BenchError(f"worker exited; see {worker.log_path}")
                    samples[tenth] = rss
                    say(f"rss: {done}/{total} tasks done, worker RSS {rss / 2**20:.1f} MiB")
                if done >= total:
                    break
                await asyncio.sleep(0.5)  # sampling interval
            else:
                raise BenchError(f"RSS scenario: not done within {self.timeout_for(total):g} s")
            await load
        finally:
            if not load.done():
                load.cancel()
        first = samples[min(samples)]
        last = samples[max(samples)]
        return {
            "worker_rss_growth_pct": (last - first) / first * 100,
            "worker_rss_at_10pct_mib": first / 2**20,
            "worker_rss_at_100pct_mib": last / 2**20,
            "worker_rss_tasks": float(total),
        }

    # ---- cost

    async def _counters(self) -> dict[str, Any]:
        return await cost.counters(self.stack, self.db, self.cfg.settle_s)

    async def _cost(self, before: dict[str, Any], n: int, lg: dict[str, Any]) -> dict[str, float]:
        return await cost.per_task(self.stack, self.db, self.cfg.settle_s, before, n, lg)


_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
