"""Creating tasks: one submit (with ``Idempotency-Key``), a batch in one transaction, and
the group commit of independent single submits.

Every function takes an open asyncpg connection and a validated
:class:`~taskflow_common.spec.TaskSpec` (or several), and returns ``asyncpg.Record`` rows
whose columns match :data:`~taskflow_common.store.rows.TASK_COLUMNS`. Callers check a
payload with :func:`~taskflow_common.spec.json_problems` first: these functions do not
re-walk it. The ingest API and the client's transactional enqueue write through here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from taskflow_common.errors import BatchKeyReused, IdempotencyKeyReused, TaskFlowError
from taskflow_common.spec import TaskSpec
from taskflow_common.store.rows import TASK_COLUMNS
from taskflow_common.tracing import current_traceparent

MAX_BATCH = 1000
"""Most task specs :func:`submit_batch` takes in one call."""


_INSERT = f"""
INSERT INTO tasks (id, type, payload, priority, status, max_attempts, idempotency_key,
                   request_hash, timeout_s, tags, trace_parent, run_at)
VALUES ($1, $2, COALESCE($3::jsonb, 'null'::jsonb), $4, 'queued', $5, $6, $7, $8,
        COALESCE($9::jsonb, '{{}}'::jsonb), $10,
        GREATEST(now(), COALESCE($11::timestamptz, now())
                        + COALESCE($12::float8, 0) * interval '1 second'))
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {TASK_COLUMNS}
"""  # noqa: S608 - TASK_COLUMNS is a constant; values are parameters

_BY_KEY = f"SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE idempotency_key = $1"  # noqa: S608


async def submit(
    conn: asyncpg.Connection, spec: TaskSpec, *, trace_parent: str | None = None
) -> tuple[asyncpg.Record, bool]:
    """Insert the task ``spec`` describes; return ``(row, created)``.

    A ``None`` payload is stored as JSON ``null`` (asyncpg would send SQL NULL).
    The row is ``queued``, due now (or at ``run_at``/after ``delay_s``) and pending
    dispatch, with ``trace_parent`` (default: the current span's W3C traceparent) so the
    dispatcher and worker continue the submitter's trace.

    With ``spec.idempotency_key`` set, the unique partial index ``tasks_idempotency_key``
    decides, never a check-then-insert: when the key is new the insert wins (one round
    trip); when it exists, the stored row is returned with ``created=False`` if its
    request hash equals ``spec.request_hash()``, else
    :class:`~taskflow_common.errors.IdempotencyKeyReused` is raised. Two concurrent
    submits with one key: Postgres makes the second insert wait for the first
    transaction and then do nothing, and the follow-up SELECT (a new snapshot under
    READ COMMITTED) sees the committed row.
    """
    parent = trace_parent if trace_parent is not None else current_traceparent()
    request_hash = spec.request_hash() if spec.idempotency_key is not None else None
    args = (
        uuid.uuid4(),
        spec.type,
        spec.payload,
        spec.priority,
        spec.max_attempts,
        spec.idempotency_key,
        request_hash,
        spec.timeout_s,
        dict(spec.tags) if spec.tags else None,
        parent,
        spec.run_at,
        spec.delay_s,
    )
    # The loop only repeats if the conflicting row vanished between our INSERT and
    # SELECT (deleted, or its inserting transaction rolled back after we looked).
    for _ in range(3):
        row = await conn.fetchrow(_INSERT, *args)
        if row is not None:
            return row, True
        assert spec.idempotency_key is not None
        existing = await conn.fetchrow(_BY_KEY, spec.idempotency_key)
        if existing is None:
            continue
        if existing["request_hash"] != request_hash:
            raise IdempotencyKeyReused(spec.idempotency_key)
        return existing, False
    raise TaskFlowError(f"Idempotency-Key {spec.idempotency_key!r}: row kept disappearing")


# -- batch submit -----------------------------------------------------------------------

# One statement for the whole batch: parallel arrays, unnested in request order. Payloads
# and tags travel as JSON text (one text[] each) and are cast to jsonb in Postgres. Each
# row has its own trace_parent ($12): a batch request repeats one, a group commit of
# single requests (:func:`submit_group`) carries each request's own.
_INSERT_BATCH = f"""
INSERT INTO tasks (id, type, payload, priority, status, max_attempts, idempotency_key,
                   request_hash, timeout_s, tags, trace_parent, run_at)
SELECT u.id, u.type, u.payload::jsonb, u.priority, 'queued', u.max_attempts,
       u.idempotency_key, u.request_hash, u.timeout_s,
       COALESCE(u.tags::jsonb, '{{}}'::jsonb), u.trace_parent,
       GREATEST(now(), COALESCE(u.run_at, now())
                       + COALESCE(u.delay_s, 0) * interval '1 second')
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
              $7::bytea[], $8::float8[], $9::text[], $10::timestamptz[], $11::float8[],
              $12::text[])
       WITH ORDINALITY AS u(id, type, payload, priority, max_attempts, idempotency_key,
                            request_hash, timeout_s, tags, run_at, delay_s, trace_parent, n)
 ORDER BY u.n
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {TASK_COLUMNS}
"""  # noqa: S608 - TASK_COLUMNS is a constant; values are parameters

_BY_KEYS = (
    f"SELECT {TASK_COLUMNS}, request_hash, idempotency_key FROM tasks "  # noqa: S608 - constant columns
    "WHERE idempotency_key = ANY($1::text[])"
)


async def submit_batch(
    conn: asyncpg.Connection, specs: Sequence[TaskSpec], *, trace_parent: str | None = None
) -> list[tuple[asyncpg.Record, bool]]:
    """Insert every task of ``specs`` in one transaction; return ``(row, created)`` in order.

    One multi-row ``INSERT ... SELECT FROM unnest(...)`` writes the whole batch (a
    follow-up SELECT runs only when some items carry an ``Idempotency-Key`` that already
    exists). Per-item keys behave as :func:`submit`'s: a key seen before with the same
    request hash gives that task back with ``created=False``; an item repeating an
    earlier item's key (same spec) gets the earlier item's task. Raises
    :class:`~taskflow_common.errors.BatchKeyReused` (carrying the lowest offending
    ``index``) when a key was used for a different request; the transaction then rolls
    back and nothing of the batch exists. Raises ``ValueError`` unless
    1 <= len(specs) <= :data:`MAX_BATCH`. Runs in a transaction of its own, or as a
    savepoint inside the caller's.
    """
    if not 1 <= len(specs) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1..{MAX_BATCH} tasks, not {len(specs)}")
    parent = trace_parent if trace_parent is not None else current_traceparent()
    ids = [uuid.uuid4() for _ in specs]
    hashes = [s.request_hash() if s.idempotency_key is not None else None for s in specs]
    results: list[tuple[asyncpg.Record, bool] | None] = [None] * len(specs)
    pending = list(range(len(specs)))
    async with conn.transaction():
        # The loop only repeats if a conflicting row vanished between INSERT and SELECT.
        for _ in range(3):
            rows = await conn.fetch(
                _INSERT_BATCH,
                *_batch_columns(specs, ids, hashes, pending),
                [parent] * len(pending),
            )
            inserted = {r["id"]: r for r in rows}
            conflicted = []
            for i in pending:
                row = inserted.get(ids[i])
                if row is not None:
                    results[i] = (row, True)
                else:
                    conflicted.append(i)
            if not conflicted:
                break
            keys = sorted({k for i in conflicted if (k := specs[i].idempotency_key)})
            existing = {r["idempotency_key"]: r for r in await conn.fetch(_BY_KEYS, keys)}
            pending = []
            for i in conflicted:
                key = specs[i].idempotency_key
                assert key is not None  # only keyed rows can conflict
                found = existing.get(key)
                if found is None:
                    pending.append(i)
                elif found["request_hash"] != hashes[i]:
                    raise BatchKeyReused(key, i)
                else:
                    results[i] = (found, False)
            if not pending:
                break
        else:
            raise TaskFlowError("batch submit: conflicting rows kept disappearing")
    done = [r for r in results if r is not None]
    assert len(done) == len(specs)
    return done


async def submit_group(
    conn: asyncpg.Connection,
    specs: Sequence[TaskSpec],
    trace_parents: Sequence[str | None],
) -> list[asyncpg.Record]:
    """Insert independent tasks without idempotency keys in ONE statement; rows in order.

    The group commit of single submits: ``specs[i]`` came from one request and
    ``trace_parents[i]`` is that request's W3C traceparent. One multi-row
    ``INSERT ... SELECT FROM unnest(...)`` (the batch statement) writes them all, in one
    implicit transaction and one round trip: every row commits or none does. Run it
    outside a transaction (no ``BEGIN``/``COMMIT`` round trips are added). Raises
    ``ValueError`` when a spec carries an ``idempotency_key`` (those go through
    :func:`submit`, whose conflict handling needs its own statement) or unless
    1 <= len(specs) <= :data:`MAX_BATCH`; driver errors (a row the database refuses,
    an outage) propagate and leave nothing inserted.
    """
    if not 1 <= len(specs) <= MAX_BATCH:
        raise ValueError(f"a group holds 1..{MAX_BATCH} tasks, not {len(specs)}")
    if len(trace_parents) != len(specs):
        raise ValueError("one trace parent per spec")
    if any(s.idempotency_key is not None for s in specs):
        raise ValueError("a group commit takes no Idempotency-Key; use submit()")
    ids = [uuid.uuid4() for _ in specs]
    which = range(len(specs))
    rows = await conn.fetch(
        _INSERT_BATCH, *_batch_columns(specs, ids, [None] * len(specs), which), list(trace_parents)
    )
    by_id = {r["id"]: r for r in rows}
    return [by_id[i] for i in ids]


def _batch_columns(
    specs: Sequence[TaskSpec],
    ids: Sequence[uuid.UUID],
    hashes: Sequence[bytes | None],
    which: Sequence[int],
) -> tuple[list[Any], ...]:
    """The parallel arrays of :data:`_INSERT_BATCH` for the items ``which`` ($1..$11)."""
    chosen = [specs[i] for i in which]
    return (
        [ids[i] for i in which],
        [s.type for s in chosen],
        [orjson.dumps(s.payload).decode() for s in chosen],
        [s.priority for s in chosen],
        [s.max_attempts for s in chosen],
        [s.idempotency_key for s in chosen],
        [hashes[i] for i in which],
        [s.timeout_s for s in chosen],
        [orjson.dumps(dict(s.tags)).decode() if s.tags else None for s in chosen],
        [s.run_at for s in chosen],
        [s.delay_s for s in chosen],
    )
