"""Replaying dead-lettered tasks by filter: what the console's "replay all" runs.

Each replayed task changes as in :func:`taskflow_common.store.deadletters.replay`
(queued, fresh attempt budget, history kept) and its open dead letters become
``replayed``, in one transaction that holds the task rows, so a dead letter the
dlq-monitor records meanwhile is resolved too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from taskflow_common.store.deadletters import REPLAYABLE_STATUSES, like_pattern, resolve_late

MAX_REPLAY = 1000
"""Most tasks one :func:`replay_matching` call replays; call again for the rest."""


@dataclass(frozen=True, slots=True)
class BulkReplay:
    """Outcome of :func:`replay_matching`.

    ``tasks``: tasks replayed (or, for a dry run, that would be); ``dead_letters``: open
    dead letters they had; ``task_ids``: the replayed ids (empty for a dry run);
    ``remaining``: matching tasks left after this call (only above :data:`MAX_REPLAY`).
    """

    tasks: int
    dead_letters: int
    task_ids: list[uuid.UUID]
    remaining: int


def _matching(type: str | None, error_contains: str | None) -> tuple[str, list[Any]]:
    # Open dead letters of replayable tasks, filtered as the list is (type exact; text a
    # case-insensitive substring of error or reason). $1 is the replayable statuses.
    args: list[Any] = [list(REPLAYABLE_STATUSES)]
    where = ["d.status = 'open'", "t.status = ANY($1::text[])"]
    if type is not None:
        args.append(type)
        where.append(f"d.type = ${len(args)}")
    if error_contains:
        args.append(like_pattern(error_contains))
        where.append(f"(d.error ILIKE ${len(args)} OR d.reason ILIKE ${len(args)})")
    sql = "FROM dead_letters d JOIN tasks t ON t.id = d.task_id WHERE " + " AND ".join(where)
    return sql, args


async def count_matching(
    conn: asyncpg.Connection, *, type: str | None = None, error_contains: str | None = None
) -> tuple[int, int]:
    """``(tasks, open dead letters)`` that :func:`replay_matching` would replay now."""
    body, args = _matching(type, error_contains)
    row = await conn.fetchrow(
        f"SELECT count(DISTINCT d.task_id) AS tasks, count(*) AS letters {body}",
        *args,
    )
    assert row is not None
    return int(row["tasks"]), int(row["letters"])


async def replay_matching(
    conn: asyncpg.Connection,
    *,
    type: str | None = None,
    error_contains: str | None = None,
    limit: int = MAX_REPLAY,
) -> BulkReplay:
    """Replay every failed or cancelled task with an open dead letter matching the filter.

    Filters as :func:`list_dead_letters` (``type`` exact, ``error_contains`` substring
    of error or reason); no filter replays every open one. Each task changes as in
    :func:`replay` (queued, fresh attempt budget, history kept) and its open dead letters
    become ``replayed``, in one statement; at most ``limit`` tasks per call, oldest
    failure first. A task replayed concurrently elsewhere is skipped, never replayed twice.
    """
    body, args = _matching(type, error_contains)
    args.append(max(1, min(limit, MAX_REPLAY)))
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            WITH m AS (
                SELECT d.task_id, min(d.failed_at) AS first_failed {body}
                GROUP BY d.task_id ORDER BY first_failed LIMIT ${len(args)}
            ), t AS (
                UPDATE tasks
                SET status = 'queued', failed_attempts = 0, dispatch_pending = true,
                    dead_letter_pending = false, dead_letter_seq = NULL,
                    dead_letter_stream = NULL, run_at = now(), result = NULL,
                    finished_at = NULL, version = version + 1, updated_at = now()
                FROM m
                WHERE tasks.id = m.task_id AND tasks.status = ANY($1::text[])
                RETURNING tasks.id
            ), d AS (
                UPDATE dead_letters SET status = 'replayed', resolved_at = now()
                WHERE task_id IN (SELECT id FROM t) AND status = 'open'
                RETURNING id
            )
            SELECT (SELECT coalesce(array_agg(id), '{{}}') FROM t) AS ids,
                   (SELECT count(*) FROM d)::int AS letters
            """,  # noqa: S608 - constant fragments; values are bind parameters
            *args,
        )
        assert row is not None
        ids = list(row["ids"])
        letters = int(row["letters"]) + await resolve_late(conn, ids)
    remaining = 0
    if len(ids) >= args[-1]:
        remaining = (await count_matching(conn, type=type, error_contains=error_contains))[0]
    return BulkReplay(len(ids), letters, ids, remaining)
