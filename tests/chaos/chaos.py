"""The chaos run of issue 4: a bounded mixed load while a fault injector breaks things.

Run with ``make chaos`` (``python -m tests.chaos.chaos``). It starts its own NATS and
Postgres (the devstack servers, on free 127.0.0.1 ports, in a temporary folder), the
five services as processes, then for ``CHAOS_SECONDS`` (default 180):

- submits tasks over REST at ``CHAOS_RATE`` per second (default 33: the issue's 5,000
  tasks in the submitting 85 % of 180 s) during the first 85 % of the run: fast (``demo``), slow
  (``test.sleep`` 1-4 s, some longer than ``ack_wait``), flaky (fail once or twice, then
  succeed) and permanently failing (retries exhausted, or a ``PermanentError``); each
  submission carries an ``Idempotency-Key`` and is retried through outages; 5 % of the
  tasks are also cancelled 0-3 s after submission (queued, running or already done);
- injects a fault every 2-6 s until the end: SIGKILL or SIGTERM of a worker
  (replaced), SIGSTOP of a worker for longer than ``ack_wait`` (a frozen worker whose
  lease expires), SIGKILL of the dispatcher (restarted), NATS killed or stopped and
  restarted, Postgres crashed (``immediate``) or stopped (``fast``) and restarted, and
  less often NATS or Postgres frozen (SIGSTOP) for up to 2.5 s;
- heals everything, then checks I1-I6 with :func:`tests.support.invariants.check_invariants`
  (a :class:`~tests.support.invariants.VersionWatcher` samples I6 throughout).

Prints exactly one line on stdout::

    chaos: submitted=N completed=N failed=N cancelled=N dead_letters=N duplicates=N violations=N

(the fault log and any violations go to stderr) and exits 0 only when there are no
duplicates, no violations and every task is terminal. ``CHAOS_SEED`` fixes the random
choices; ``CHAOS_KEEP=1`` keeps the temporary folder (logs) for inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from taskflow_devstack.database import ensure_database, migrate_database
from taskflow_devstack.servers import NatsServer, PostgresServer, free_port, pg_work_dir
from tests.support.invariants import VersionWatcher, check_invariants
from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.stack import Stack

REPO = Path(__file__).resolve().parents[2]

ACK_WAIT_S = 3.0
WORKERS = 3
LOAD_SHARE = 0.85
"""Tasks are submitted during this share of the run; faults go on until its end."""
CANCEL_SHARE = 0.05
"""Share of the submitted tasks the load also tries to cancel, 0-3 s after submitting."""
DRAIN_S = 120.0
"""After the run, how long every task has to become terminal (I1's deadline)."""


def say(text: str) -> None:
    """Log a line to stderr (stdout carries only the result line)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of task in the mix: its weight, type and payload maker."""

    name: str
    weight: int
    type: str
    payload: Callable[[random.Random], Any]


MIX = (
    Kind("fast", 55, "demo", lambda r: {"sleep_ms": r.randint(0, 50)}),
    Kind("slow", 12, "test.sleep", lambda r: {"sleep_s": round(r.uniform(1.0, 4.0), 2)}),
    Kind("flaky", 18, "test.flaky", lambda r: {"fail_times": r.choice([1, 2])}),
    Kind("failing", 10, "test.always_fail", lambda r: {}),
    Kind("permanent", 5, "fail", lambda r: {"reason": "chaos"}),
)


@dataclass
class Load:
    """Submits the mix through the ingest API; remembers every accepted task id."""

    stack: Stack
    rng: random.Random
    ids: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    lost: int = 0
    cancels: int = 0

    async def submit(self, kind: Kind, give_up_at: float) -> None:
        """POST one task, retrying with the same Idempotency-Key until accepted."""
        key = f"chaos-{uuid.uuid4()}"
        body = {"type": kind.type, "payload": kind.payload(self.rng), "priority": self._prio()}
        delay = 0.2
        while True:
            try:
                resp = await self.stack.http.post(
                    f"{self.stack.api_url}/tasks",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=10,
                )
                if resp.status_code in (200, 201):
                    task_id = resp.json()["task"]["id"]
                    self.ids.append(task_id)
                    self.kinds[kind.name] += 1
                    if self.rng.random() < CANCEL_SHARE:
                        await self.cancel(task_id, give_up_at)
                    return
            except httpx.HTTPError:
                pass
            self.retries += 1
            if time.monotonic() > give_up_at:
                # Never accepted (Postgres down until the end): not a submitted task.
                self.lost += 1
                return
            await asyncio.sleep(delay)  # back off before re-submitting
            delay = min(delay * 2, 2.0)

    async def cancel(self, task_id: str, give_up_at: float) -> None:
        """Cancel ``task_id`` after 0-3 s (it may be queued, running or already done)."""
        await asyncio.sleep(self.rng.uniform(0.0, 3.0))  # when the user changes their mind
        for _ in range(5):
            try:
                resp = await self.stack.http.post(
                    f"{self.stack.api_url}/tasks/{task_id}/cancel", timeout=10
                )
            except httpx.HTTPError:
                resp = None
            if resp is not None and resp.status_code in (200, 409):
                self.cancels += resp.status_code == 200
                return
            if time.monotonic() > give_up_at:
                return
            await asyncio.sleep(0.5)  # back off through an outage

    def _prio(self) -> str:
        return self.rng.choices(["high", "normal", "low"], weights=[2, 6, 2])[0]

    async def run(self, rate: float, until: float, give_up_at: float) -> None:
        """Submit ``rate`` tasks per second until the monotonic time ``until``."""
        pending: set[asyncio.Task[None]] = set()
        weights = [k.weight for k in MIX]
        start = time.monotonic()
        n = 0
        while time.monotonic() < until:
            kind = self.rng.choices(MIX, weights=weights)[0]
            task = asyncio.create_task(self.submit(kind, give_up_at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            # Pacing of the load generator (not a synchronisation).
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)


# --------------------------------------------------------------------------- faults


@dataclass
class Injector:
    """Breaks one thing at a time and puts it back; counts what it did."""

    stack: Stack
    nats: NatsServer
    pg: PostgresServer
    rng: random.Random
    done: Counter[str] = field(default_factory=Counter)

    def live_workers(self) -> list[ServiceProcess]:
        return [w for w in self.stack.workers if w.running]

    async def replace_worker(self) -> None:
        await self.stack.start_worker(ready=False)

    async def kill_worker(self) -> None:
        workers = self.live_workers()
        if not workers:
            return
        victim = self.rng.choice(workers)
        victim.kill()
        say(f"SIGKILL {victim.env['WORKER_ID']}")
        await self.replace_worker()

    async def term_worker(self) -> None:
        workers = self.live_workers()
        if not workers:
            return
        victim = self.rng.choice(workers)
        victim.terminate()
        say(f"SIGTERM {victim.env['WORKER_ID']}")
        await self.replace_worker()

    async def freeze_worker(self) -> None:
        workers = self.live_workers()
        if not workers:
            return
        victim = self.rng.choice(workers)
        frozen = ACK_WAIT_S * self.rng.uniform(1.2, 2.0)
        say(f"SIGSTOP {victim.env['WORKER_ID']} for {frozen:.1f}s")
        victim.pause()
        await asyncio.sleep(frozen)  # the fault's duration
        victim.resume()

    async def kill_dispatcher(self) -> None:
        if self.stack.dispatcher is not None:
            self.stack.dispatcher.kill()
        say("SIGKILL dispatcher")
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))  # downtime of the fault
        self.stack.dispatcher = await self.stack.services.start(
            "dispatcher", self.stack.env, ready=False
        )

    async def restart_nats(self) -> None:
        down = self.rng.uniform(0.5, 3.0)
        how = self.rng.choice(["kill", "stop"])
        say(f"NATS {how}, down {down:.1f}s")
        await asyncio.to_thread(self.nats.kill if how == "kill" else self.nats.stop)
        await asyncio.sleep(down)  # downtime of the fault
        await asyncio.to_thread(self.nats.start)

    async def restart_postgres(self) -> None:
        down = self.rng.uniform(0.5, 3.0)
        mode = self.rng.choice(["immediate", "fast"])
        say(f"Postgres stop -m {mode}, down {down:.1f}s")
        await asyncio.to_thread(self.pg.stop, mode)
        await asyncio.sleep(down)  # downtime of the fault
        await asyncio.to_thread(self.pg.start)

    async def freeze_postgres(self) -> None:
        frozen = self.rng.uniform(0.5, 2.5)
        say(f"Postgres SIGSTOP for {frozen:.1f}s")
        await asyncio.to_thread(self.pg.pause)
        try:
            await asyncio.sleep(frozen)  # the fault's duration
        finally:
            await asyncio.to_thread(self.pg.resume)

    async def freeze_nats(self) -> None:
        frozen = self.rng.uniform(0.5, 2.5)
        say(f"NATS SIGSTOP for {frozen:.1f}s")
        self.nats.pause()
        try:
            await asyncio.sleep(frozen)  # the fault's duration
        finally:
            self.nats.resume()

    async def run(self, until: float) -> None:
        """Inject faults every 2-6 s until the monotonic time ``until``."""
        faults = {
            self.kill_worker: 4,
            self.term_worker: 2,
            self.freeze_worker: 2,
            self.kill_dispatcher: 2,
            self.restart_nats: 2,
            self.restart_postgres: 2,
            self.freeze_postgres: 1,
            self.freeze_nats: 1,
        }
        while True:
            await asyncio.sleep(self.rng.uniform(2.0, 6.0))  # time between faults
            if time.monotonic() >= until:
                return
            fault = self.rng.choices(list(faults), weights=list(faults.values()))[0]
            self.done[fault.__name__] += 1
            await fault()

    async def heal(self) -> None:
        """Everything up again: both servers, the dispatcher, WORKERS live workers."""
        if not self.nats.running:
            await asyncio.to_thread(self.nats.start)
        if not self.pg.running:
            await asyncio.to_thread(self.pg.start)
        for w in self.stack.workers:
            if w.running:
                w.resume()
        if self.stack.dispatcher is None or not self.stack.dispatcher.running:
            self.stack.dispatcher = await self.stack.services.start("dispatcher", self.stack.env)
        while len(self.live_workers()) < WORKERS:
            await self.stack.start_worker()


# --------------------------------------------------------------------------- run


def _env(db_url: str, nats_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "NATS_URL": nats_url,
        "HTTP_PORT": str(free_port()),
        "DLQ_HTTP_PORT": str(free_port()),
        "LOG_LEVEL": "INFO",
        "NATS_STREAM_NAME": "CHAOS",
        "NATS_CONSUMER_NAME": "chaos-worker",
        "NATS_SUBJECT_PREFIX": "chaos",
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_CONCURRENCY": "8",
        "WORKER_ACK_WAIT": f"{ACK_WAIT_S}s",
        "WORKER_SHUTDOWN_GRACE": "3s",
        "WORKER_BACKOFF_BASE": "500ms",
        "WORKER_BACKOFF_MAX": "3s",
        "WORKER_MAX_ATTEMPTS": "3",
        "DISPATCHER_REAP_INTERVAL": "200ms",
    }


async def chaos(seconds: float, rate: float, seed: int, base: Path) -> int:
    """Run the whole thing in ``base``; return the exit code."""
    rng = random.Random(seed)
    say(f"seed={seed} seconds={seconds:g} rate={rate:g}/s folder={base}")
    nats = NatsServer(base / "nats" / "store", log_file=base / "nats.log")
    pg = PostgresServer(pg_work_dir(base / "pg", f"chaos-{base.name}"), fsync=True)
    services = ServiceFactory(base / "logs", cwd=REPO)
    stack: Stack | None = None
    try:
        await asyncio.to_thread(nats.start)
        await asyncio.to_thread(pg.start)
        db_url = pg.dsn("taskflow")
        await ensure_database(db_url)
        await migrate_database(db_url, REPO / "migrations")
        stack = await Stack(services, _env(db_url, nats.url)).start(workers=WORKERS)
        load = Load(stack, rng)
        injector = Injector(stack, nats, pg, rng)
        start = time.monotonic()
        load_until = start + seconds * LOAD_SHARE
        faults_until = start + seconds
        async with VersionWatcher(
            db_url, interval_s=0.5, max_duration_s=seconds + DRAIN_S * 2
        ) as w:
            await asyncio.gather(
                load.run(rate, load_until, give_up_at=start + seconds),
                injector.run(faults_until),
            )
            await injector.heal()
            say(f"faults: {dict(injector.done)}; submitted {dict(load.kinds)}")
            rest = start + seconds - time.monotonic()
            report = await check_invariants(
                stack, load.ids, deadline_s=max(rest, 0) + DRAIN_S, watcher=w
            )
        say(
            f"checked in {report.elapsed_s:.1f}s: {report.executions} executions, "
            f"{load.cancels} cancels accepted, {load.retries} submit retries, "
            f"{load.lost} submissions never accepted, {w.samples} I6 samples"
        )
        if report.violations:
            say(report.describe(limit=40))
        print(report.line(), flush=True)
        ok = report.ok and report.duplicates == 0 and report.all_terminal
        if not ok:
            say(f"FAILED with seed={seed}: CHAOS_SEED={seed} replays these choices")
        return 0 if ok else 1
    finally:
        with contextlib.suppress(Exception):
            if stack is not None:
                await stack.close()
        await services.stop_all()
        await asyncio.to_thread(nats.stop)
        await asyncio.to_thread(pg.stop, "immediate")
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(pg.data_dir, ignore_errors=True)


def main() -> int:
    """Entry point: read ``CHAOS_*`` from the environment, run, clean up."""
    seconds = float(os.environ.get("CHAOS_SECONDS") or 180)
    rate = float(os.environ.get("CHAOS_RATE") or 33)
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    base = Path(tempfile.mkdtemp(prefix="taskflow-chaos-"))
    # A second Ctrl-C should not leave servers behind: turn SIGTERM into KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(chaos(seconds, rate, seed, base))
    finally:
        if os.environ.get("CHAOS_KEEP") == "1":
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
