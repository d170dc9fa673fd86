"""Task events: what migrations 0002 and 0003 notify, how to ask for them, how to read them.

Triggers send a notification on :data:`CHANNEL`, delivered at commit, per status change
of a *watched* task (:func:`watch`: ``tasks.watched_until`` in the future) and per
status change of an execution other than ``succeeded`` (watched or not). Execution
inserts and successes send none: they happen in the statement that changes the task's
status, whose notification covers them. The payload is plain text::

    task:<task id>:<status>:<version>
    execution:<task id>:<attempt>:<status>

It says which task changed and whether re-reading it is worth it; listeners read the
rows themselves (the payload is a hint, never the state to show).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from taskflow_common.store.rows import TERMINAL_STATUSES

CHANNEL = "taskflow_task_events"
"""LISTEN channel of task and execution changes (migrations 0002, 0003)."""

WATCH_TTL_S = 30.0
"""How long one :func:`watch` keeps a task's status changes notified (seconds); whoever
waits longer renews it (the ingest API does every few seconds)."""

# One row, blocking: this UPDATE takes the row lock every status change takes, so a change
# in flight commits first (and the caller's next read sees it) or runs after this commits
# (and its trigger sees watched_until). GREATEST ignores NULL.
_WATCH = """
UPDATE tasks SET watched_until = GREATEST(watched_until, now() + make_interval(secs => $2))
 WHERE id = $1
"""

# Many rows, never waiting: a renewal must not queue behind (or deadlock with) a
# statement that locks several tasks; a row skipped now is renewed on the next round,
# long before its watch runs out.
_RENEW = """
UPDATE tasks SET watched_until = GREATEST(watched_until, now() + make_interval(secs => $2))
 WHERE id IN (SELECT id FROM tasks WHERE id = ANY($1::uuid[])
                 FOR NO KEY UPDATE SKIP LOCKED)
RETURNING id
"""


async def watch(conn: asyncpg.Connection, task_id: uuid.UUID, ttl_s: float = WATCH_TTL_S) -> bool:
    """Have ``task_id``'s status changes notified for ``ttl_s`` seconds; False: no such task.

    Call it BEFORE reading the task: every change that commits after this returns is
    notified, and every earlier one is visible to the read. One round trip; may wait
    for a statement that holds the task's row lock (bounded by the statement timeout).
    """
    status = await conn.execute(_WATCH, task_id, ttl_s)
    return bool(status != "UPDATE 0")


async def renew_watches(
    conn: asyncpg.Connection, task_ids: Sequence[uuid.UUID], ttl_s: float = WATCH_TTL_S
) -> set[uuid.UUID]:
    """Extend the watches of ``task_ids`` to ``ttl_s`` from now; return the ids renewed.

    Rows locked at that moment are skipped (not waited for); an id missing from the
    result is either gone or was busy, and should be renewed again soon.
    """
    if not task_ids:
        return set()
    rows = await conn.fetch(_RENEW, list(task_ids), ttl_s)
    return {r["id"] for r in rows}


EventKind = Literal["task", "execution"]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One notification: ``kind`` task (``number`` = version) or execution (= attempt)."""

    kind: EventKind
    task_id: uuid.UUID
    status: str
    number: int

    @property
    def terminal(self) -> bool:
        """True for a task event whose status is completed, failed or cancelled."""
        return self.kind == "task" and self.status in TERMINAL_STATUSES

    @classmethod
    def parse(cls, payload: str) -> TaskEvent | None:
        """Decode a notification payload; None for anything this module did not write.

        Task payloads are ``task:<id>:<status>:<version>``; execution payloads are
        ``execution:<id>:<attempt>:<status>`` (the order the trigger writes them in).
        """
        parts = payload.split(":")
        if len(parts) != 4:
            return None
        kind, ident, third, fourth = parts
        try:
            task_id = uuid.UUID(ident)
            if kind == "task":
                return cls("task", task_id, third, int(fourth))
            if kind == "execution":
                return cls("execution", task_id, fourth, int(third))
        except ValueError:
            return None
        return None
