"""Retention SQL: delete old terminal tasks with their executions, and resolved dead letters.

Everything is deleted in small batches, one statement (so one short transaction) each:
a batch selects at most ``limit`` ids oldest first through a partial index (migration
0005), locks them ``FOR UPDATE SKIP LOCKED`` (a row someone is changing right now, e.g. a
retry, is left for the next batch and re-checked there) and deletes them; row locks are
held for the milliseconds the statement runs, never on the whole table. The dispatcher's
pruner repeats batches until one comes back short.

What is kept, whatever its age:

- tasks that are not terminal (queued, processing, retrying);
- a failed task whose dead letter is still to be published (``dead_letter_pending``) or
  whose dead letter is open (not replayed or discarded): the dead-letter console must be
  able to show and replay it;
- open dead letters (only replayed or discarded ones are pruned, by ``resolved_at``).

A task and its executions go in the same statement (the executions first, through the
same batch of ids; the foreign key's ``ON DELETE CASCADE`` would catch any left), so a
pruner killed at any moment leaves either the whole task or nothing of it. Dead letters
that name a pruned task keep their row with ``task_id`` NULL (the foreign key's
``ON DELETE SET NULL``).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from taskflow_common.store.rows import TERMINAL_STATUSES

PRUNABLE_STATUSES = tuple(sorted(TERMINAL_STATUSES))
"""Task statuses that retention deletes: ``cancelled``, ``completed``, ``failed``."""

_PRUNE_TASKS = """
WITH batch AS (
    SELECT t.id
      FROM tasks t
     WHERE t.status = $1
       AND t.finished_at < now() - make_interval(secs => $2)
       AND NOT t.dead_letter_pending
       AND NOT EXISTS (SELECT 1 FROM dead_letters d
                        WHERE d.task_id = t.id AND d.status = 'open')
     ORDER BY t.finished_at
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), executions AS (
    DELETE FROM task_executions e USING batch WHERE e.task_id = batch.id
    RETURNING 1
), gone AS (
    DELETE FROM tasks t USING batch WHERE t.id = batch.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS tasks, (SELECT count(*) FROM executions) AS executions
"""

_PRUNE_DEAD_LETTERS = """
WITH batch AS (
    SELECT id
      FROM dead_letters
     WHERE status <> 'open' AND resolved_at < now() - make_interval(secs => $1)
     ORDER BY resolved_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM dead_letters d USING batch WHERE d.id = batch.id
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# One min() per status: each is a single probe of tasks_finished (status, finished_at).
_OLDEST = """
SELECT extract(epoch FROM now() - (SELECT min(finished_at) FROM tasks
                                     WHERE status = 'cancelled'))::float8 AS cancelled,
       extract(epoch FROM now() - (SELECT min(finished_at) FROM tasks
                                     WHERE status = 'completed'))::float8 AS completed,
       extract(epoch FROM now() - (SELECT min(finished_at) FROM tasks
                                     WHERE status = 'failed'))::float8 AS failed
"""


@dataclass(frozen=True, slots=True)
class Pruned:
    """One batch: ``tasks`` deleted and their ``executions`` deleted with them."""

    tasks: int
    executions: int


async def prune_tasks(
    conn: asyncpg.Connection, status: str, older_than_s: float, limit: int
) -> Pruned:
    """Delete up to ``limit`` ``status`` tasks finished more than ``older_than_s`` ago.

    One statement: the executions of the batch and the batch itself, oldest finish first
    (see the module docstring for what is kept). ``status`` is one of
    :data:`PRUNABLE_STATUSES`; ``older_than_s`` > 0 seconds (database clock); ``limit``
    >= 1. Raises ``ValueError`` otherwise (a zero retention means "keep forever" and is
    the caller's to skip).
    """
    if status not in PRUNABLE_STATUSES:
        raise ValueError(f"status must be one of {PRUNABLE_STATUSES}, not {status!r}")
    if older_than_s <= 0 or limit < 1:
        raise ValueError("need older_than_s > 0 and limit >= 1")
    row = await conn.fetchrow(_PRUNE_TASKS, status, older_than_s, limit)
    return Pruned(row["tasks"], row["executions"])


async def prune_dead_letters(conn: asyncpg.Connection, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` replayed or discarded dead letters resolved ``older_than_s`` ago.

    One statement; open dead letters are never touched. Returns how many were deleted.
    Raises ``ValueError`` for ``older_than_s <= 0`` or ``limit < 1``.
    """
    if older_than_s <= 0 or limit < 1:
        raise ValueError("need older_than_s > 0 and limit >= 1")
    deleted: int = await conn.fetchval(_PRUNE_DEAD_LETTERS, older_than_s, limit)
    return deleted


async def oldest_terminal_age(conn: asyncpg.Connection) -> dict[str, float | None]:
    """Return, per terminal status, the age in seconds of its oldest task (None: none).

    Three index probes in one statement; what retention keeps on purpose (open dead
    letters) counts too, so a value far above the retention says what is held.
    """
    row = await conn.fetchrow(_OLDEST)
    return {s: row[s] for s in PRUNABLE_STATUSES}
