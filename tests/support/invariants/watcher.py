"""I6: sample every task's version and status while a scenario runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import asyncpg

from tests.support.invariants.report import Violation
from tests.support.invariants.snapshot import DB_OUTAGE
from tests.support.stack import TERMINAL


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
            with contextlib.suppress(asyncio.CancelledError, *DB_OUTAGE):
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
                except DB_OUTAGE:
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
