"""The dispatcher's tick pass over schedules, in the caller's transaction.

1. :func:`lock_due` locks due schedules (``FOR UPDATE SKIP LOCKED``: two dispatchers never
   take the same one) and, in a second statement with a fresh snapshot, reads the state
   of each one's last task (for the overlap policy);
2. :func:`fire` inserts one task per tick, the template read from the locked row, with
   ``ON CONFLICT (schedule, scheduled_for) DO NOTHING``: a tick replayed (a next fire
   time set back) or a second dispatcher that raced past the lock cannot make a second
   task;
3. :func:`advance` stores each schedule's next fire time and last tick;

then the caller commits. :func:`next_due` says when to look again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from taskflow_common.cadence import Cadence
from taskflow_common.store.rows import TERMINAL_STATUSES
from taskflow_common.store.schedules import cadence_of
from taskflow_common.ticks import Policy, PreviousRun

_TERMINAL_ARRAY = "'{" + ",".join(sorted(TERMINAL_STATUSES)) + "}'::text[]"

_LOCK_DUE = f"""
SELECT s.name, s.cron, s.timezone, s.every_s, s.missed, s.catch_up_max, s.overlap,
       s.next_fire_at, s.last_task_id,
       COALESCE($2::timestamptz, statement_timestamp()) AS pass_at
  FROM schedules s
 WHERE NOT s.paused
   AND s.next_fire_at <= COALESCE($2::timestamptz, statement_timestamp())
   AND NOT (s.overlap = 'queue' AND EXISTS (
            SELECT 1 FROM tasks t
             WHERE t.id = s.last_task_id AND t.status <> ALL({_TERMINAL_ARRAY})))
 ORDER BY s.next_fire_at
 LIMIT $1
   FOR UPDATE OF s SKIP LOCKED
"""  # noqa: S608 - constant status list; values are parameters

_LAST_RUNS = "SELECT id, status, finished_at FROM tasks WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A locked due schedule: what the tick math needs.

    ``now`` is the pass's clock (the database's, or the one a test passed);
    ``previous`` the state of its last task (None: none, or pruned).
    """

    name: str
    cadence: Cadence
    policy: Policy
    next_fire_at: dt.datetime
    previous: PreviousRun | None
    now: dt.datetime


async def lock_due(
    conn: asyncpg.Connection, limit: int, *, now: dt.datetime | None = None
) -> list[DueSchedule]:
    """Lock up to ``limit`` due, unpaused schedules, oldest next tick first (in a transaction).

    Schedules whose ``queue`` tick waits for a running task are left alone. ``now``
    replaces the database clock (tests simulate time with it). Two statements: the lock,
    then the last tasks' states read with a snapshot taken after the lock, so a task
    another dispatcher committed just before is seen.
    """
    rows = await conn.fetch(_LOCK_DUE, limit, now)
    if not rows:
        return []
    ids = [r["last_task_id"] for r in rows if r["last_task_id"] is not None]
    runs = {r["id"]: r for r in await conn.fetch(_LAST_RUNS, ids)} if ids else {}
    due = []
    for r in rows:
        last = runs.get(r["last_task_id"])
        previous = (
            PreviousRun(last["status"] not in TERMINAL_STATUSES, last["finished_at"])
            if last is not None
            else None
        )
        due.append(
            DueSchedule(
                r["name"],
                cadence_of(r),
                Policy(r["missed"], r["catch_up_max"], r["overlap"]),
                r["next_fire_at"],
                previous,
                r["pass_at"],
            )
        )
    return due


@dataclass(frozen=True, slots=True)
class Tick:
    """One task to create: schedule ``name``, tick ``scheduled_for``, its trace context."""

    name: str
    scheduled_for: dt.datetime
    trace_parent: str | None = None


_FIRE = """
INSERT INTO tasks (id, type, payload, priority, status, max_attempts, timeout_s, tags,
                   trace_parent, run_at, schedule, scheduled_for)
SELECT u.id, s.task_type, s.payload, s.priority, 'queued', COALESCE(s.max_attempts, $5),
       s.timeout_s, s.tags, u.trace_parent, now(), s.name, u.scheduled_for
  FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
       WITH ORDINALITY AS u(id, name, scheduled_for, trace_parent, n)
  JOIN schedules s ON s.name = u.name
 ORDER BY u.n
ON CONFLICT (schedule, scheduled_for) WHERE schedule IS NOT NULL DO NOTHING
RETURNING id, schedule, scheduled_for
"""


async def fire(
    conn: asyncpg.Connection, ticks: Sequence[Tick], *, default_max_attempts: int
) -> list[asyncpg.Record]:
    """Insert one task per tick (one statement); return ``(id, schedule, scheduled_for)``
    of those inserted, in order. A tick that already has its task inserts nothing.

    Call in the transaction that locked the schedules (the template is read from them).
    """
    if not ticks:
        return []
    return list(
        await conn.fetch(
            _FIRE,
            [uuid.uuid4() for _ in ticks],
            [t.name for t in ticks],
            [t.scheduled_for for t in ticks],
            [t.trace_parent for t in ticks],
            default_max_attempts,
        )
    )


@dataclass(frozen=True, slots=True)
class Advance:
    """Store ``next_fire_at`` for ``name``; ``last_tick`` the newest tick fired (or None)."""

    name: str
    next_fire_at: dt.datetime
    last_tick: dt.datetime | None = None


_ADVANCE = """
UPDATE schedules AS s
   SET next_fire_at = u.next_fire_at,
       last_fire_at = COALESCE(u.last_tick, s.last_fire_at),
       last_task_id = COALESCE(
           (SELECT t.id FROM tasks t WHERE t.schedule = s.name AND t.scheduled_for = u.last_tick),
           s.last_task_id)
  FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS u(name, next_fire_at, last_tick)
 WHERE s.name = u.name
"""


async def advance(conn: asyncpg.Connection, moves: Sequence[Advance]) -> None:
    """Store the next fire time and last tick of each locked schedule (one statement).

    Touches no indexed column, so each update is heap-only (migration 0005).
    """
    if moves:
        await conn.execute(
            _ADVANCE,
            [m.name for m in moves],
            [m.next_fire_at for m in moves],
            [m.last_tick for m in moves],
        )


_NEXT_DUE = f"""
SELECT extract(epoch FROM min(next_fire_at) FILTER (WHERE NOT waiting) - clock_timestamp())::float8
           AS next_in,
       coalesce(bool_or(waiting), false) AS waiting
  FROM (SELECT s.next_fire_at,
               s.overlap = 'queue' AND s.next_fire_at <= clock_timestamp()
               AND t.status IS NOT NULL AND t.status <> ALL({_TERMINAL_ARRAY})
               AS waiting
          FROM schedules s LEFT JOIN tasks t ON t.id = s.last_task_id
         WHERE NOT s.paused) AS x
"""  # noqa: S608 - constant status list


@dataclass(frozen=True, slots=True)
class NextDue:
    """When to look again: ``in_s`` seconds until the next tick (<= 0: due; None: none),
    ``waiting``: some ``queue`` tick waits for a run to end (poll for it)."""

    in_s: float | None
    waiting: bool


async def next_due(conn: asyncpg.Connection) -> NextDue:
    """Read when the next unpaused, not-waiting schedule is due (database clock)."""
    row = await conn.fetchrow(_NEXT_DUE)
    return NextDue(row["next_in"], row["waiting"])
