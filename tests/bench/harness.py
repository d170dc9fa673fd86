"""Run every scenario ``BENCH_RUNS`` times, then print the table and write the JSON.

Order within a run (one stack for all runs; the workers are what changes):

1. load generator alone against a no-op server (its ceiling);
2. burst with one worker, with the cost counters around it;
3. batch burst, when ``POST /api/v1/tasks/batch`` exists;
4. paced latency with one worker;
5. a second worker, burst again (scale);
6. drain: workers stopped, N queued and published, one worker started (it stays for
   the next run);
7. issue 15: an every-1s schedule's tick latency, then retention (a burst with and
   without pruning over ``BENCH_PRUNE_ROWS`` old rows, table sizes) (:mod:`.maintenance`).

``BENCH_ONLY=schedules,retention`` (names in :data:`tests.bench.stack.SCENARIOS`) runs
only the scenarios named.

Then once: worker RSS growth with a fresh worker, and with ``BENCH_PROFILE=1`` a last
burst under py-spy.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

from taskflow_devstack.servers import free_port
from tests.bench import maintenance, profile, report
from tests.bench.probes import PgProbe, nats_varz
from tests.bench.scenarios import BenchError, Scenarios, say
from tests.bench.stack import REPO, BenchConfig, BenchStack

NOTES = [
    "Throughput: tasks / (last finished_at - first created_at), database clock; drain: "
    "from the first claim (execution started_at) to the last completion.",
    "Paced latency: execution.started_at (attempt 1) and task.finished_at minus "
    "task.created_at, all database clock (now() of each transaction).",
    "pg_round_trips_per_task: data-carrying TCP segments that clients sent to Postgres "
    "(kernel counters, ss -ti data_segs_in on the server's sockets), bench's own "
    "connection excluded, over the 1-worker burst; includes the idle background of the "
    "window (pg_round_trips_idle_share).",
    "pg_xacts_per_task: pg_stat_database xact_commit+xact_rollback delta (after a settle "
    "period so idle backends flush), minus the bench's own queries; pg_write_xacts_per_task: "
    "transaction ids assigned (cluster-wide).",
    "NATS messages: nats-server /varz in_msgs+out_msgs delta over the 1-worker burst.",
    "CPU: user+system seconds per process group (psutil) over the 1-worker burst; "
    "Postgres includes every backend; interrupts (irq+softirq, where loopback TCP's "
    "receive side runs) are charged to no process; other_processes is the rest.",
]


async def _start_noop() -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.loadgen", "serve", "--port", str(port),
        "--seconds", "7200",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise BenchError("the no-op server did not start")
    return proc, f"http://127.0.0.1:{port}/api/v1/tasks"


async def _stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _profile(sc: Scenarios, out_dir: Path) -> dict[str, Any]:
    exe = profile.py_spy()
    if exe is None:
        raise BenchError("BENCH_PROFILE=1 needs py-spy: make bench BENCH_PROFILE=1 installs it")
    stack = sc.stack
    targets = {"api": stack.api, "dispatcher": stack.dispatcher, "worker": stack.workers[0]}
    recs = [
        await profile.record(exe, name, proc.pid, out_dir)
        for name, proc in targets.items()
        if proc is not None and proc.pid is not None
    ]
    await asyncio.sleep(1.0)  # py-spy attaches before the burst starts
    try:
        figures = await sc.burst()
    finally:
        for rec in recs:
            await rec.stop()
    summaries = {r.name: profile.summarise(r.out) for r in recs if r.out.is_file()}
    text = profile.render(summaries)
    (out_dir / "summary.txt").write_text(text)
    say(f"profiles in {out_dir} (burst under py-spy: {figures['burst_tasks_per_s']:.0f} tasks/s)")
    return {"dir": str(out_dir), "burst_tasks_per_s": figures["burst_tasks_per_s"], **summaries}


_SUMMARY = ("burst_tasks_per_s", "drain_tasks_per_s", "paced_start_p50_ms", "tick_queued_p99_ms")


async def _one_run(
    sc: Scenarios, cfg: BenchConfig, r: int, noop_url: str, batch: bool
) -> dict[str, float]:
    """One run of every scenario ``BENCH_ONLY`` selects, in the order of the module doc."""
    fig: dict[str, float] = {}
    if cfg.wants("ceiling"):
        say(f"run {r}/{cfg.runs}: load generator ceiling")
        fig |= await sc.ceiling(noop_url)
    if cfg.wants("burst"):
        say(f"run {r}: burst of {cfg.n} (1 worker, with cost counters)")
        fig |= await sc.burst(cost=True)
    if batch and cfg.wants("batch"):
        say(f"run {r}: batch burst")
        fig |= await sc.burst(batch=True)
    if cfg.wants("paced"):
        say(f"run {r}: paced {cfg.paced_rate:g}/s for {cfg.paced_seconds:g} s")
        fig |= await sc.paced()
    if cfg.wants("scale"):
        say(f"run {r}: burst with 2 workers")
        await sc.stack.start_worker()
        two = await sc.burst()
        fig["scale_2_workers_tasks_per_s"] = two["burst_tasks_per_s"]
        if "burst_tasks_per_s" in fig:
            fig["scale_1_worker_tasks_per_s"] = fig["burst_tasks_per_s"]
    if cfg.wants("drain"):
        say(f"run {r}: drain of {cfg.n}")
        fig |= await sc.drain()
    if cfg.wants("schedules"):
        say(f"run {r}: an every-1s schedule for {cfg.tick_seconds:g} s")
        fig |= await maintenance.tick_latency(sc, cfg.tick_seconds)
    if cfg.wants("retention"):
        say(f"run {r}: retention over {cfg.prune_rows:,} old rows")
        fig |= await maintenance.retention(sc, cfg.prune_rows)
    return fig


async def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole bench; return the JSON document (also written to ``cfg.out``)."""
    out_dir = cfg.out.parent
    log_dir = out_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    stack = BenchStack(cfg, log_dir)
    probe: PgProbe | None = None
    noop: asyncio.subprocess.Process | None = None
    started = report.now_utc()
    load_before = report.machine()["load_avg"]
    runs: list[dict[str, float]] = []
    profiles: dict[str, Any] | None = None
    try:
        say("starting servers and services")
        await stack.start_servers()
        await stack.start_services()
        probe = await PgProbe.open(stack.database_url)
        sc = Scenarios(stack, probe)
        batch = await sc.detect_batch()
        say(f"batch endpoint: {'yes' if batch else 'not there (n/a)'}")
        noop, noop_url = await _start_noop()
        for r in range(1, cfg.runs + 1):
            fig = await _one_run(sc, cfg, r, noop_url, batch)
            runs.append(fig)
            say(f"run {r}: " + ", ".join(f"{k} {fig[k]:.2f}" for k in _SUMMARY if k in fig))
        if cfg.wants("rss"):
            say(f"worker RSS over {cfg.rss_tasks} tasks")
            runs[0] |= await sc.rss_growth()
        if cfg.profile:
            profiles = await _profile(sc, out_dir / "profiles")
        pg_version = await probe.server_version()
    finally:
        await _stop(noop)
        if probe is not None:
            await probe.close()
        varz = nats_varz(stack.nats_monitor_url)
        await stack.close()
    figures = report.aggregate(runs)
    document: dict[str, Any] = {
        "schema": 1,
        "started": started,
        "finished": report.now_utc(),
        "git": report.git_state(REPO),
        "versions": report.versions(pg_version, varz.get("version") if varz else None),
        "machine": {**report.machine(), "load_avg_at_start": load_before},
        "config": {
            "n": cfg.n,
            "runs": cfg.runs,
            "concurrency": cfg.concurrency,
            "paced_rate": cfg.paced_rate,
            "paced_seconds": cfg.paced_seconds,
            "batch_size": cfg.batch_size,
            "batch_endpoint": batch,
            "rss_tasks": cfg.rss_tasks,
            "only": sorted(cfg.only),
            "prune_rows": cfg.prune_rows,
            "tick_seconds": cfg.tick_seconds,
            "settle_s": cfg.settle_s,
            "pg_fsync": cfg.pg_fsync if cfg.database_url is None else None,
            "servers": {
                "postgres": "external" if cfg.database_url else "embedded",
                "nats": "external" if cfg.nats_url else "embedded",
            },
            "log_level": cfg.log_level,
            "service_env": cfg.service_env,
            "workers": "one process (two in scale_2_workers), service defaults otherwise",
        },
        "figures": figures,
        "notes": NOTES,
    }
    if profiles is not None:
        document["profiles"] = profiles
    report.write(cfg.out, document)
    return document


def main() -> int:
    """``python -m tests.bench``: run, print the table, write the JSON; 1 on failure."""
    import os

    try:
        cfg = BenchConfig.from_env(os.environ)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        document = asyncio.run(run(cfg))
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    print(report.render(document["figures"], cfg.n, cfg.runs))
    print(f"\nwritten: {cfg.out}")
    return 0
