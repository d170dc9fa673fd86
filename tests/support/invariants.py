"""The execution-safety invariants of issue 4, checked against a running stack.

One checker for every fault scenario and for the chaos run. It reads what a user or an
operator can see: the ``tasks``, ``task_executions`` and ``dead_letters`` tables, the
dlq-monitor's list API, and the task consumers' state on the NATS server.

- **I1** every task reaches ``completed``/``failed``/``cancelled`` within the deadline;
- **I2** at most one ``succeeded`` execution per task, and no two executions of one task
  overlap in ``[started_at, finished_at]`` unless the earlier one is ``abandoned`` (its
  lease expired: the worker was gone or frozen and the attempt was taken over);
- **I3** no execution stays ``started`` once its worker process is gone; executions that
  ended ``abandoned``/``interrupted`` carry a reason;
- **I4** task status agrees with its executions (rows numbered 1..attempts, one success
  that is the last attempt for ``completed``, none for ``failed``, counted failures
  match ``failed_attempts``); every ``failed`` task has exactly one open dead letter that
  the dlq-monitor lists; no ``completed`` task has one;
- **I5** once all tasks are terminal, the three task consumers show 0 pending and 0
  ack-pending;
- **I6** a task's ``version`` only grows and a terminal status never changes except by
  an explicit replay: sampled during the scenario by :class:`VersionWatcher`, and
  compared once more with the final state.

Timestamps compared by I2 all come from the database clock (``now()``), so process
clocks do not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import nats.js.errors

from tests.support.stack import TERMINAL, Stack

PRIORITIES = ("high", "normal", "low")
COUNTED = {"failed", "abandoned"}
"""Execution statuses that count against ``max_attempts``."""

# Errors that only mean "a server is restarting right now": the checker polls again.
_DB_OUTAGE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a query cancelled while its connection dropped
)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which one, for which task (if any), and what was seen."""

    invariant: str
    task_id: str | None
    detail: str

    def __str__(self) -> str:
        where = f" task {self.task_id}" if self.task_id else ""
        return f"{self.invariant}{where}: {self.detail}"


@dataclass
class Report:
    """What :func:`check_invariants` found.

    ``statuses`` counts the tasks' final statuses; ``dead_letters`` is the number of open
    dead letters of these tasks; ``duplicates`` the tasks with more than one succeeded
    execution; ``executions`` the number of execution rows.
    """

    submitted: int
    statuses: Counter[str]
    dead_letters: int
    duplicates: int
    executions: int
    violations: list[Violation]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations

    def of(self, *invariants: str) -> list[Violation]:
        """The violations of the named invariants (``"I2"``, ...)."""
        return [v for v in self.violations if v.invariant in invariants]

    @property
    def all_terminal(self) -> bool:
        """True when every submitted task ended terminal."""
        return sum(self.statuses[s] for s in TERMINAL) == self.submitted

    def line(self) -> str:
        """The one-line summary the chaos run prints."""
        return (
            f"chaos: submitted={self.submitted} completed={self.statuses['completed']} "
            f"failed={self.statuses['failed']} cancelled={self.statuses['cancelled']} "
            f"dead_letters={self.dead_letters} duplicates={self.duplicates} "
            f"violations={len(self.violations)}"
        )

    def describe(self, limit: int = 30) -> str:
        """The summary line plus up to ``limit`` violations, one per line."""
        lines = [self.line(), f"statuses: {dict(self.statuses)}"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)

    def assert_ok(self, *invariants: str) -> None:
        """Raise ``AssertionError`` listing the violations (of ``invariants``, or all)."""
        found = self.of(*invariants) if invariants else self.violations
        assert not found, self.describe()


# --------------------------------------------------------------------------- snapshot


@dataclass
class _Snapshot:
    tasks: dict[str, asyncpg.Record]
    executions: dict[str, list[asyncpg.Record]]
    dead_letters: dict[str, list[asyncpg.Record]]
    listed_open: dict[str, int] | None  # task id -> open dead letters the dlq API lists
    listed_error: str | None
    consumers: dict[str, tuple[int, int]] | None  # name -> (pending, ack_pending)
    consumer_error: str | None
    live_workers: set[str]


async def _read_db(url: str, ids: list[uuid.UUID]) -> tuple[Any, Any, Any]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        tasks = await conn.fetch(
            """SELECT id, status, attempts, failed_attempts, max_attempts, version,
                      result IS NOT NULL AS has_result
                 FROM tasks WHERE id = ANY($1::uuid[])""",
            ids,
        )
        execs = await conn.fetch(
            """SELECT task_id, attempt, status, worker_id, error, started_at, finished_at
                 FROM task_executions WHERE task_id = ANY($1::uuid[])
                ORDER BY task_id, attempt""",
            ids,
        )
        letters = await conn.fetch(
            "SELECT task_id, status FROM dead_letters WHERE task_id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close(timeout=5)
    return tasks, execs, letters


async def _listed_open_dead_letters(stack: Stack, wanted: set[str]) -> dict[str, int]:
    """Count, per task, the open dead letters the dlq-monitor API lists (all pages)."""
    counts: Counter[str] = Counter()
    cursor: str | None = None
    for _ in range(1000):  # bounded: 200 per page
        params = {"limit": "200", "status": "open"}
        if cursor:
            params["cursor"] = cursor
        resp = await stack.http.get(f"{stack.dlq_url}/dlq", params=params, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        for item in body["items"]:
            if item.get("task_id") in wanted and item.get("status") == "open":
                counts[item["task_id"]] += 1
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return dict(counts)


async def consumer_states(env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Return ``{consumer: (num_pending, num_ack_pending)}`` for the three task consumers.

    Raises ``nats.js.errors.NotFoundError`` when a consumer or the stream is missing and
    nats-py's connection errors when the server does not answer.
    """
    nc = await nats.connect(
        env["NATS_URL"], connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = nc.jetstream(timeout=3)
        out: dict[str, tuple[int, int]] = {}
        for p in PRIORITIES:
            name = f"{env['NATS_CONSUMER_NAME']}-{p}"
            info = await js.consumer_info(env["NATS_STREAM_NAME"], name)
            out[name] = (info.num_pending or 0, info.num_ack_pending or 0)
        return out
    finally:
        await nc.close()


def _live_workers(stack: Stack) -> set[str]:
    return {
        p.env.get("WORKER_ID", f"pid-{p.pid}")
        for p in stack.workers
        if p.running and p.env.get("WORKER_ID")
    }


async def _snapshot(stack: Stack, ids: list[uuid.UUID], *, dlq_api: bool, consumers: bool) -> Any:
    tasks, execs, letters = await _read_db(stack.env["DATABASE_URL"], ids)
    by_exec: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for e in execs:
        by_exec[str(e["task_id"])].append(e)
    by_dl: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for d in letters:
        by_dl[str(d["task_id"])].append(d)
    listed: dict[str, int] | None = None
    listed_error: str | None = None
    if dlq_api:
        try:
            listed = await _listed_open_dead_letters(stack, {str(i) for i in ids})
        except httpx.HTTPError as exc:
            listed_error = f"{exc.__class__.__name__}: {exc}"
    states: dict[str, tuple[int, int]] | None = None
    error: str | None = None
    if consumers:
        try:
            states = await consumer_states(stack.env)
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
    return _Snapshot(
        tasks={str(t["id"]): t for t in tasks},
        executions=dict(by_exec),
        dead_letters=dict(by_dl),
        listed_open=listed,
        listed_error=listed_error,
        consumers=states,
        consumer_error=error,
        live_workers=_live_workers(stack),
    )


# --------------------------------------------------------------------------- rules


def _overlaps(execs: Sequence[asyncpg.Record], now: dt.datetime) -> list[str]:
    """I2's timing rule: pairs of executions whose run intervals overlap."""
    problems = []
    ordered = sorted(execs, key=lambda e: e["started_at"])
    for i, a in enumerate(ordered):
        if a["status"] == "abandoned":
            continue  # its lease expired: a later attempt may legitimately take over
        a_end = a["finished_at"] or now
        for b in ordered[i + 1 :]:
            if b["started_at"] < a_end:
                problems.append(
                    f"attempt {a['attempt']} ({a['status']}, {a['started_at']:%T.%f}-"
                    f"{a_end:%T.%f}) overlaps attempt {b['attempt']} ({b['status']}, "
                    f"started {b['started_at']:%T.%f})"
                )
    return problems


def _evaluate(
    snap: _Snapshot, ids: list[str], replayed: set[str], now: dt.datetime
) -> tuple[list[Violation], int, int]:
    """Return (violations of I1-I5 in ``snap``, duplicates, open dead letters)."""
    out: list[Violation] = []
    duplicates = 0
    open_letters = 0
    for tid in ids:
        task = snap.tasks.get(tid)
        if task is None:
            out.append(Violation("I1", tid, "task row missing"))
            continue
        status = task["status"]
        execs = snap.executions.get(tid, [])
        letters = snap.dead_letters.get(tid, [])
        n_open = sum(1 for d in letters if d["status"] == "open")
        open_letters += n_open
        was_replayed = tid in replayed or any(d["status"] == "replayed" for d in letters)
        succeeded = [e for e in execs if e["status"] == "succeeded"]
        # I1
        if status not in TERMINAL:
            out.append(Violation("I1", tid, f"still {status} (attempts={task['attempts']})"))
        # I2
        if len(succeeded) > 1:
            duplicates += 1
            out.append(
                Violation(
                    "I2",
                    tid,
                    f"{len(succeeded)} succeeded executions "
                    f"(attempts {[e['attempt'] for e in succeeded]})",
                )
            )
        out += [Violation("I2", tid, p) for p in _overlaps(execs, now)]
        # I3
        for e in execs:
            if e["status"] == "started" and e["worker_id"] not in snap.live_workers:
                out.append(
                    Violation(
                        "I3",
                        tid,
                        f"attempt {e['attempt']} still started but worker {e['worker_id']} is gone",
                    )
                )
            if e["status"] in ("abandoned", "interrupted") and not (e["error"] or "").strip():
                out.append(
                    Violation("I3", tid, f"attempt {e['attempt']} {e['status']} without a reason")
                )
        # I4: executions agree with the task row
        attempts = [e["attempt"] for e in execs]
        if attempts != list(range(1, task["attempts"] + 1)):
            out.append(
                Violation("I4", tid, f"attempts={task['attempts']} but executions {attempts}")
            )
        last = execs[-1] if execs else None
        if status in TERMINAL:
            running = [e["attempt"] for e in execs if e["status"] == "started"]
            if running:
                out.append(Violation("I4", tid, f"{status} but attempts {running} still started"))
        if status == "completed":
            if len(succeeded) != 1 or last is None or last["status"] != "succeeded":
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"completed but executions are {[e['status'] for e in execs]}",
                    )
                )
            if not task["has_result"]:
                out.append(Violation("I4", tid, "completed without a stored result"))
        if status == "failed":
            if succeeded:
                out.append(Violation("I4", tid, "failed but has a succeeded execution"))
            if last is None or last["status"] not in COUNTED:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed but last execution is {last['status'] if last else None}",
                    )
                )
            if n_open != 1:
                out.append(Violation("I4", tid, f"failed with {n_open} open dead letters"))
            if snap.listed_open is not None and snap.listed_open.get(tid, 0) != 1:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed but the dlq-monitor lists {snap.listed_open.get(tid, 0)} "
                        "open dead letters for it",
                    )
                )
        elif n_open:
            out.append(Violation("I4", tid, f"{status} with {n_open} open dead letters"))
        # A cancel that races a failing attempt may leave that attempt 'failed' without
        # counting it (store.tasks.cancel): the accounting rule is for the other ends.
        if not was_replayed and status in ("completed", "failed"):
            counted = sum(1 for e in execs if e["status"] in COUNTED)
            if counted != task["failed_attempts"]:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed_attempts={task['failed_attempts']} but {counted} counted "
                        f"executions ({[e['status'] for e in execs]})",
                    )
                )
            if counted > task["max_attempts"]:
                out.append(
                    Violation("I4", tid, f"{counted} counted failures > max {task['max_attempts']}")
                )
    if snap.listed_error is not None:
        out.append(Violation("I4", None, f"dlq-monitor API unavailable: {snap.listed_error}"))
    # I5
    all_terminal = all(
        snap.tasks.get(t) is not None and snap.tasks[t]["status"] in TERMINAL for t in ids
    )
    if all_terminal:
        if snap.consumers is None:
            out.append(Violation("I5", None, f"consumer state unavailable: {snap.consumer_error}"))
        else:
            for name, (pending, ack_pending) in sorted(snap.consumers.items()):
                if pending or ack_pending:
                    out.append(
                        Violation(
                            "I5", None, f"{name}: pending={pending} ack_pending={ack_pending}"
                        )
                    )
    return out, duplicates, open_letters


# --------------------------------------------------------------------------- I6 watcher


class VersionWatcher:
    """Sample ``(id, version, status)`` of every task while a scenario runs (I6).

    Use as ``async with VersionWatcher(stack.env["DATABASE_URL"]) as watcher:``; pass it
    to :func:`check_invariants`. Sampling is bounded by ``max_duration_s`` and skips
    rounds while Postgres is away. Reports a version that went down, a status change
    without a version bump, and a terminal status that changed, unless the task was
    replayed (a ``replayed`` dead letter, or :meth:`allow_replay`).
    """

    def __init__(
        self, database_url: str, *, interval_s: float = 0.2, max_duration_s: float = 900.0
    ) -> None:
        self.database_url = database_url
        self.interval_s = interval_s
        self.max_duration_s = max_duration_s
        self.last: dict[str, tuple[int, str]] = {}
        self.samples = 0
        self.violations: list[Violation] = []
        self.left_terminal: list[tuple[str, str, str]] = []  # (task, from, to)
        self.allowed: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def allow_replay(self, task_id: str) -> None:
        """Say that ``task_id`` is replayed on purpose (its terminal status may change)."""
        self.allowed.add(task_id)

    async def __aenter__(self) -> VersionWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop sampling (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            # asyncpg may answer a cancel during a query with InternalClientError.
            with contextlib.suppress(asyncio.CancelledError, *_DB_OUTAGE):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.max_duration_s
        conn: asyncpg.Connection | None = None
        try:
            while loop.time() < end:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.database_url, timeout=2)
                    rows = await conn.fetch("SELECT id, version, status FROM tasks", timeout=5)
                except _DB_OUTAGE:
                    if conn is not None:
                        conn.terminate()
                    conn = None
                else:
                    self.observe((str(r["id"]), r["version"], r["status"]) for r in rows)
                await asyncio.sleep(self.interval_s)  # the sampling period, not a sync
        finally:
            if conn is not None:
                conn.terminate()

    def observe(self, rows: Iterable[tuple[str, int, str]]) -> None:
        """Compare one sample with the previous one."""
        self.samples += 1
        for tid, version, status in rows:
            before = self.last.get(tid)
            self.last[tid] = (version, status)
            if before is None:
                continue
            old_version, old_status = before
            if version < old_version:
                self.violations.append(
                    Violation("I6", tid, f"version went from {old_version} to {version}")
                )
            elif version == old_version and status != old_status:
                self.violations.append(
                    Violation(
                        "I6",
                        tid,
                        f"status {old_status} -> {status} without a version bump ({version})",
                    )
                )
            if old_status in TERMINAL and status != old_status:
                self.left_terminal.append((tid, old_status, status))

    def final(self, final_rows: dict[str, asyncpg.Record], replayed: set[str]) -> list[Violation]:
        """The watcher's violations plus a last comparison with the final state."""
        out = list(self.violations)
        if self.samples < 2:
            out.append(Violation("I6", None, f"only {self.samples} samples taken"))
        for tid, old, new in self.left_terminal:
            if tid not in replayed and tid not in self.allowed:
                out.append(Violation("I6", tid, f"terminal status {old} changed to {new}"))
        for tid, row in final_rows.items():
            seen = self.last.get(tid)
            if seen is None:
                continue
            version, status = seen
            if row["version"] < version:
                out.append(
                    Violation("I6", tid, f"final version {row['version']} < sampled {version}")
                )
            if (
                status in TERMINAL
                and row["status"] != status
                and tid not in replayed
                and tid not in self.allowed
            ):
                out.append(Violation("I6", tid, f"terminal status {status} became {row['status']}"))
        return out


# --------------------------------------------------------------------------- checker


async def check_invariants(
    stack: Stack,
    task_ids: Iterable[str],
    *,
    deadline_s: float,
    watcher: VersionWatcher | None = None,
    replayed: Iterable[str] = (),
    dlq_api: bool = True,
    consumers: bool = True,
    poll_s: float = 0.25,
) -> Report:
    """Check I1-I6 for ``task_ids`` on ``stack``; wait up to ``deadline_s`` for them to hold.

    Polls until every task is terminal, no gone worker still owns a ``started``
    execution, every failed task's dead letter is recorded and listed, and the task
    consumers are drained, or until the deadline; then evaluates every invariant on
    one final snapshot. ``replayed`` names tasks replayed on purpose (I4's attempt
    accounting and I6's terminal rule do not apply to them). ``dlq_api=False`` skips
    the dlq-monitor listing (a stack without one); ``consumers=False`` skips I5. An
    API or server that cannot be read counts as a violation, never as a pass.
    A watcher passed in is stopped here.
    """
    ids = list(dict.fromkeys(str(t) for t in task_ids))
    uuids = [uuid.UUID(t) for t in ids]
    allowed = set(replayed)
    started = time.monotonic()
    deadline = started + deadline_s
    snap: _Snapshot | None = None
    found: list[Violation] = []
    duplicates = open_letters = 0
    last_error: BaseException | None = None
    while True:
        try:
            snap = await _snapshot(stack, uuids, dlq_api=dlq_api, consumers=consumers)
        except _DB_OUTAGE as exc:  # Postgres restarting (chaos): poll again
            last_error = exc
        else:
            now = dt.datetime.now(dt.UTC)
            found, duplicates, open_letters = _evaluate(snap, ids, allowed, now)
            # Only violations that waiting can still cure keep us polling.
            curable = [v for v in found if v.invariant in ("I1", "I3", "I4", "I5")]
            if not curable:
                break
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(poll_s)  # polling period against the deadline
    if snap is None:
        raise AssertionError(f"could not read the database before the deadline: {last_error!r}")
    if watcher is not None:
        await watcher.stop()
        found += watcher.final(snap.tasks, allowed | _replayed(snap))
    return Report(
        submitted=len(ids),
        statuses=Counter(snap.tasks[t]["status"] if t in snap.tasks else "missing" for t in ids),
        dead_letters=open_letters,
        duplicates=duplicates,
        executions=sum(len(v) for v in snap.executions.values()),
        violations=found,
        elapsed_s=time.monotonic() - started,
    )


def _replayed(snap: _Snapshot) -> set[str]:
    return {
        tid
        for tid, letters in snap.dead_letters.items()
        if any(d["status"] == "replayed" for d in letters)
    }


__all__ = [
    "Report",
    "VersionWatcher",
    "Violation",
    "check_invariants",
    "consumer_states",
]
