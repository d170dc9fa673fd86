"""What a scenario costs per task: Postgres transactions and round trips, NATS messages, CPU.

:func:`counters` is read before a scenario (after a settle period in which Postgres
flushes idle backends' statistics, measuring the idle background meanwhile);
:func:`per_task` after it, as figures per task.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from tests.bench.probes import CpuProbe, PgProbe, nats_varz, pg_request_flights
from tests.bench.stack import BenchStack


def cpu_probe(stack: BenchStack) -> CpuProbe:
    """CPU groups: api, dispatcher, worker (all worker processes), postgres, nats."""
    s = stack
    groups: dict[str, list[int]] = {
        "api": [p for p in [s.api.pid if s.api else None] if p],
        "dispatcher": [p for p in [s.dispatcher.pid if s.dispatcher else None] if p],
        "worker": [w.pid for w in s.workers if w.pid],
        "postgres": [p for p in [s.pg_pid()] if p],
        "nats": [p for p in [s.nats_pid()] if p],
    }
    return CpuProbe(groups, trees=["postgres"])


async def counters(stack: BenchStack, db: PgProbe, settle_s: float) -> dict[str, Any]:
    """Settle (Postgres flushes idle backends' stats after up to 10 s), then read all,
    measuring the idle background over the settle period."""
    cpu = cpu_probe(stack)
    idle0 = live_counters(stack, db, cpu)
    await asyncio.sleep(settle_s)  # let every backend flush its stats
    idle1 = live_counters(stack, db, cpu)
    pg = await db.counters()
    live = live_counters(stack, db, cpu)
    live["pg"] = pg
    live["cpu_probe"] = cpu
    live["idle"] = {
        k: (idle1[k] - idle0[k]) / (idle1["t"] - idle0["t"])
        for k in ("flights", "nats_msgs")
        if idle0[k] is not None and idle1[k] is not None
    }
    return live


def live_counters(stack: BenchStack, db: PgProbe, cpu: CpuProbe) -> dict[str, Any]:
    """Counters read at once: Postgres round trips, NATS messages, CPU per group."""
    varz = nats_varz(stack.nats_monitor_url)
    return {
        "t": time.monotonic(),
        "flights": pg_request_flights(stack.pg_port, [db.local_port]),
        "nats_msgs": (varz["in_msgs"] + varz["out_msgs"]) if varz else None,
        "nats_in": varz["in_msgs"] if varz else None,
        "nats_out": varz["out_msgs"] if varz else None,
        "cpu": cpu.snapshot(),
    }


async def per_task(
    stack: BenchStack,
    db: PgProbe,
    settle_s: float,
    before: dict[str, Any],
    n: int,
    lg: dict[str, Any],
) -> dict[str, float]:
    """Per-task costs between ``before`` and now (live counters now, Postgres's
    statistics after another settle period)."""
    cpu: CpuProbe = before["cpu_probe"]
    after = live_counters(stack, db, cpu)
    await asyncio.sleep(settle_s)  # flush of the backends' statistics
    pg_after = await db.counters()
    pg0 = before["pg"]
    # Own queries from the first counters() up to (not including) the second.
    own = pg_after.own_queries - 1 - (pg0.own_queries - 1)
    out: dict[str, float] = {
        "pg_xacts_per_task": (pg_after.xacts - pg0.xacts - own) / n,
        "pg_write_xacts_per_task": (pg_after.next_xid - pg0.next_xid) / n,
        "pg_tuple_writes_per_task": (pg_after.tuple_writes - pg0.tuple_writes) / n,
    }
    if pg_after.statements is not None and pg0.statements is not None:
        out["pg_statements_per_task"] = (pg_after.statements - pg0.statements - own) / n
    window = after["t"] - before["t"]
    if after["flights"] is not None and before["flights"] is not None:
        out["pg_round_trips_per_task"] = (after["flights"] - before["flights"]) / n
        if "flights" in before["idle"]:
            out["pg_round_trips_idle_per_s"] = before["idle"]["flights"]
            out["pg_round_trips_idle_share"] = (
                before["idle"]["flights"] * window / max(1, after["flights"] - before["flights"])
            )
    if after["nats_msgs"] is not None and before["nats_msgs"] is not None:
        out["nats_msgs_per_task"] = (after["nats_msgs"] - before["nats_msgs"]) / n
        out["nats_in_msgs_per_task"] = (after["nats_in"] - before["nats_in"]) / n
        out["nats_out_msgs_per_task"] = (after["nats_out"] - before["nats_out"]) / n
    ours = 0.0
    for name, value in after["cpu"].items():
        if name.startswith("machine_") or ":" in name:
            continue
        delta = value - before["cpu"][name]
        ours += delta
        out[f"cpu_s_per_1000_{name}"] = delta / n * 1000
        kernel = after["cpu"][f"{name}:sys"] - before["cpu"][f"{name}:sys"]
        out[f"cpu_kernel_pct_{name}"] = kernel / delta * 100 if delta > 0 else 0.0
        switches = after["cpu"][f"{name}:cs"] - before["cpu"][f"{name}:cs"]
        out[f"ctx_switches_per_task_{name}"] = switches / n
    out["cpu_s_per_1000_loadgen"] = lg["cpu_s"] / n * 1000
    # What the stack's own CPU per task allows on this machine's cores, were nothing
    # else running: a noise-free companion to the measured rate.
    out["cpu_bound_tasks_per_s"] = (psutil.cpu_count() or 1) * n / max(ours, 1e-9)
    busy = after["cpu"]["machine_busy"] - before["cpu"]["machine_busy"]
    irq = after["cpu"]["machine_irq"] - before["cpu"]["machine_irq"]
    out["cpu_s_per_1000_interrupts"] = irq / n * 1000
    out["cpu_s_per_1000_other_processes"] = max(0.0, busy - irq - ours - lg["cpu_s"]) / n * 1000
    out["cost_window_s"] = window
    return out
