"""Task SQL for the API side: submit (single, grouped or batch, with Idempotency-Key), read,
executions, list (with tag filters), cancel.

Every function takes an open asyncpg connection (pooled or the caller's own, inside a
transaction or not) and returns ``asyncpg.Record`` rows whose columns match
:data:`~taskflow_common.store.rows.TASK_COLUMNS` (render them with
:func:`~taskflow_common.store.rows.task_json`). Statements are constant strings, so
asyncpg's per-connection statement cache makes each one a single round trip after its
first use.

What Postgres ``jsonb`` can hold is decided here too (:func:`json_problems`): callers
check a payload with it before :func:`submit`, which does not re-walk the payload.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import math
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from taskflow_common.errors import (
    IdempotencyKeyReused,
    InvalidStateError,
    NotFoundError,
    TaskFlowError,
)
from taskflow_common.store.rows import TASK_COLUMNS, TERMINAL_STATUSES
from taskflow_common.subjects import Priority
from taskflow_common.tracing import current_traceparent

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_LIST_LIMIT = 200
MAX_BATCH = 1000
"""Most task specs :func:`submit_batch` takes in one call."""
CANCELLABLE_STATUSES = ("queued", "retrying", "processing")
"""Task statuses :func:`cancel` accepts; a terminal task is a 409 ``invalid_state``."""
TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""What ``tasks.type`` accepts (the same CHECK as migrations/0001_tasks.sql)."""


class InvalidCursor(TaskFlowError, ValueError):
    """A list cursor that this module did not produce (or that was damaged)."""


class BatchKeyReused(IdempotencyKeyReused):
    """Item ``index`` of a batch reuses an ``Idempotency-Key`` with a different spec.

    The key was used before (by an earlier request or an earlier item of the same
    batch) for a task whose request differs; nothing of the batch is created.
    """

    def __init__(self, key: str, index: int) -> None:
        super().__init__(key)
        self.index = index


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated, normalised request to create one task.

    ``payload`` is any JSON value that passed :func:`json_problems`. ``max_attempts``
    is already resolved (1..100). The optional fields are the per-task options of later
    API versions; they enter the request hash only when set, so adding them does not
    change the hash of requests that do not use them. ``run_at`` (aware datetime) and
    ``delay_s`` (seconds) schedule the first run; a time in the past means now.
    """

    type: str
    payload: Any = field(default_factory=dict)
    priority: Priority = "normal"
    max_attempts: int = 3
    idempotency_key: str | None = None
    timeout_s: float | None = None
    tags: Mapping[str, str] | None = None
    run_at: dt.datetime | None = None
    delay_s: float | None = None

    def canonical(self) -> bytes:
        """Return the canonical JSON of what the request asks for (keys sorted, compact).

        The idempotency key itself is not part of it: it names the request, the
        canonical form is what the request says.
        """
        doc: dict[str, Any] = {
            "type": self.type,
            "payload": self.payload,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
        }
        if self.timeout_s is not None:
            doc["timeout_s"] = self.timeout_s
        if self.tags:
            doc["tags"] = dict(self.tags)
        if self.run_at is not None:
            doc["run_at"] = self.run_at.astimezone(dt.UTC).isoformat()
        if self.delay_s is not None:
            doc["delay_s"] = self.delay_s
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def request_hash(self) -> bytes:
        """Return sha256(:meth:`canonical`), 32 bytes; stored in ``tasks.request_hash``."""
        return hashlib.sha256(self.canonical()).digest()


def json_problems(value: Any, path: str, max_depth: int) -> list[tuple[str, str]]:
    """List what stops ``value`` (decoded JSON) from being stored as ``jsonb``.

    Returns ``[(field_path, message)]``, empty when the value is fine; paths look like
    ``payload.items[3].name``. Rejected: non-finite floats (``1e400`` decodes to inf),
    integers outside int64 (clients in most languages cannot read them back), ``\\u0000``
    in any string or object key (jsonb refuses it), and containers nested more than
    ``max_depth`` levels (``{}`` and ``[]`` are one level). Iterative, so a deep value
    cannot exhaust the Python stack. Stops after 20 problems.

    Cost: a clean value is checked in one pass that builds no paths (about 50 ms for
    the worst case a 1 MiB body can hold, an array of half a million numbers); paths
    are worked out only once a problem was found.
    """
    if _clean(value, max_depth):
        return []
    return _problems(value, path, max_depth)


def _scalar_ok(item: Any) -> bool:
    kind = type(item)
    if kind is str:
        return "\x00" not in item
    if kind is int:
        return bool(INT64_MIN <= item <= INT64_MAX)
    if kind is float:
        return math.isfinite(item)
    return item is None or kind is bool


def _clean(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is not list and kind is not dict:
            if not _scalar_ok(item):
                return False
            continue
        depth += 1
        if depth > max_depth:
            return False
        if kind is dict:
            for key in item:
                if "\x00" in key:
                    return False
            children = item.values()
        else:
            children = item
        # Scalars are checked in place (most of a payload); containers wait on the stack.
        for child in children:
            ck = type(child)
            if ck is list or ck is dict:
                stack.append((child, depth))
            elif ck is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    return False
            elif ck is str:
                if "\x00" in child:
                    return False
            elif not _scalar_ok(child):
                return False
    return True


def _problems(value: Any, path: str, max_depth: int) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(problems) < 20:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                problems.append((where, "must not contain the NUL character (\\u0000)"))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                problems.append((where, "integer out of range (must fit in 64-bit signed)"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append((where, "number out of range (must be finite)"))
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                problems.append((where, f"nested deeper than {max_depth} levels"))
                continue
            # Pushed in reverse so that problems come out in document order.
            if isinstance(item, dict):
                for key, sub in reversed(item.items()):
                    if "\x00" in key:
                        problems.append((f"{where}.{key}", "object keys must not contain \\u0000"))
                    stack.append((sub, f"{where}.{key}", depth + 1))
            else:
                for index in range(len(item) - 1, -1, -1):
                    stack.append((item[index], f"{where}[{index}]", depth + 1))
        else:
            problems.append((where, f"not a JSON value ({type(item).__name__})"))
    return problems


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
    request hash equals ``spec.request_hash()``, else :class:`IdempotencyKeyReused` is
    raised. Two concurrent submits with one key: Postgres makes the second insert wait
    for the first transaction and then do nothing, and the follow-up SELECT (a new
    snapshot under READ COMMITTED) sees the committed row.
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
    :class:`BatchKeyReused` (carrying the lowest offending ``index``) when a key was
    used for a different request; the transaction then rolls back and nothing of the
    batch exists. Raises ``ValueError`` unless 1 <= len(specs) <= :data:`MAX_BATCH`.
    Runs in a transaction of its own, or as a savepoint inside the caller's.
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


_GET = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"  # noqa: S608 - constant columns


async def get(conn: asyncpg.Connection, task_id: uuid.UUID) -> asyncpg.Record:
    """Return the task row ``task_id``; raise :class:`NotFoundError` when there is none."""
    row = await conn.fetchrow(_GET, task_id)
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    return row


# One round trip tells "no such task" (no row) from "no attempts yet" (one row of NULLs).
_EXECUTIONS = """
SELECT e.id, e.task_id, e.attempt, e.status, e.worker_id, e.error, e.error_type,
       e.started_at, e.finished_at, e.duration_ms
FROM tasks t LEFT JOIN task_executions e ON e.task_id = t.id
WHERE t.id = $1
ORDER BY e.attempt
"""


async def executions(conn: asyncpg.Connection, task_id: uuid.UUID) -> list[asyncpg.Record]:
    """Return the task's execution rows ordered by attempt (``[]`` before the first run).

    Columns: id, task_id, attempt, status, worker_id, error, error_type, started_at,
    finished_at, duration_ms (render with ``rows.execution_json``). Raises
    :class:`NotFoundError` when the task does not exist.
    """
    rows = await conn.fetch(_EXECUTIONS, task_id)
    if not rows:
        raise NotFoundError(f"task {task_id} not found")
    return [r for r in rows if r["id"] is not None]


# -- cancel ----------------------------------------------------------------------------

CANCEL_REASON = "cancelled by request"

_CANCEL = f"""
UPDATE tasks
   SET status = 'cancelled', dispatch_pending = false, finished_at = now(),
       version = version + 1, updated_at = now()
 WHERE id = $1 AND status = ANY($2::text[])
RETURNING {TASK_COLUMNS}
"""  # noqa: S608 - constant columns

_CLOSE_RUNNING = """
UPDATE task_executions
   SET status = 'cancelled', error = $3, finished_at = now(),
       duration_ms = extract(epoch FROM now() - started_at) * 1000
 WHERE task_id = $1 AND attempt = $2 AND status = 'started'
RETURNING attempt
"""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Result of :func:`cancel`: the task row, and the attempt that was running, if any.

    ``stopped_attempt`` is the attempt whose execution this cancel closed as
    ``cancelled``: its worker must be told to stop the handler (a ``CancelRequest``).
    """

    task: asyncpg.Record
    stopped_attempt: int | None


async def cancel(conn: asyncpg.Connection, task_id: uuid.UUID) -> Cancelled:
    """Cancel a queued, retrying or processing task; return the :class:`Cancelled`.

    1. The task becomes ``cancelled`` (``dispatch_pending`` cleared, so the dispatcher
       never publishes it; a copy already on the bus is refused by the claim, which
       requires queued/retrying), fenced on its status. Against a worker recording the
       running attempt, the row lock decides: if the worker's success or failure commits
       first the task is terminal and this raises 409; if the cancel commits first the
       worker's statement (fenced on ``status='processing'`` and the attempt) matches
       nothing.
    2. Then, in its own statement, the running attempt (if any) is closed as
       ``cancelled``. Separate on purpose: the worker's failure path locks the
       execution row before the task row, so holding both here could deadlock. A
       worker failure recorded between the two leaves that attempt ``failed``, which is
       what happened to it.

    Call it outside a transaction (each statement commits on its own). Raises
    :class:`NotFoundError` for an unknown task and :class:`InvalidStateError` (409
    ``invalid_state``) for a task that is already completed, failed or cancelled.
    """
    # Repeats only if a retry made the task cancellable again between the two reads.
    for _ in range(3):
        row = await conn.fetchrow(_CANCEL, task_id, list(CANCELLABLE_STATUSES))
        if row is not None:
            break
        status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
        if status is None:
            raise NotFoundError(f"task {task_id} not found")
        if status in TERMINAL_STATUSES:
            raise InvalidStateError(
                f"task {task_id} is {status}; only queued, retrying or processing tasks "
                "can be cancelled"
            )
    else:
        raise TaskFlowError(f"task {task_id}: status kept changing during cancel")
    stopped = None
    if row["attempts"] > 0:
        stopped = await conn.fetchval(_CLOSE_RUNNING, task_id, row["attempts"], CANCEL_REASON)
    return Cancelled(row, stopped)


# -- listing ------------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CURSOR = struct.Struct(">Bq16s")  # version, created_at in µs since the epoch, id
_CURSOR_VERSION = 1
_CURSOR_TEXT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def encode_cursor(created_at: dt.datetime, task_id: uuid.UUID) -> str:
    """Return the opaque cursor for "rows after (``created_at``, ``task_id``)".

    Format (opaque to clients): base64url, unpadded, of a version byte, the timestamp
    in microseconds since the Unix epoch (int64, big-endian) and the 16 id bytes.
    """
    micros = (created_at - _EPOCH) // dt.timedelta(microseconds=1)
    raw = _CURSOR.pack(_CURSOR_VERSION, micros, task_id.bytes)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """Invert :func:`encode_cursor`; raise :class:`InvalidCursor` for anything else."""
    if not _CURSOR_TEXT.match(cursor):
        raise InvalidCursor("cursor is not one this API returned")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        version, micros, id_bytes = _CURSOR.unpack(raw)
        if version != _CURSOR_VERSION:
            raise InvalidCursor("cursor is not one this API returned")
        return _EPOCH + dt.timedelta(microseconds=micros), uuid.UUID(bytes=id_bytes)
    except (binascii.Error, struct.error, OverflowError) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: ``rows`` newest first; ``next_cursor`` None on the last."""

    rows: Sequence[asyncpg.Record]
    next_cursor: str | None


async def list_tasks(
    conn: asyncpg.Connection,
    *,
    status: str | None = None,
    type: str | None = None,
    priority: str | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Return tasks newest first (``created_at DESC, id DESC``), filtered by equality.

    ``tags`` keeps tasks holding every given key with the given value (``tags @> $n``,
    served by the ``tasks_tags`` GIN index); other tags of a task do not matter.

    Keyset pagination: ``cursor`` (from a previous :class:`Page`) continues strictly
    after the last row returned, so rows inserted meanwhile never shift a page (new rows
    are newer than every cursor and appear only on a fresh first page). ``limit`` is
    1..200. Raises :class:`InvalidCursor` for a damaged cursor and ``ValueError`` for a
    limit out of range. The statement is assembled from fixed fragments (values are
    always parameters), so each filter combination is its own cached statement and can
    use its ``tasks_<filter>_created`` index.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIST_LIMIT}")
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("status", status), ("type", type), ("priority", priority)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if tags:
        args.append(dict(tags))
        where.append(f"tags @> ${len(args)}::jsonb")
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        args += [after_at, after_id]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (
        f"SELECT {TASK_COLUMNS} FROM tasks"  # noqa: S608 - fixed fragments, values are parameters
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    )
    rows = await conn.fetch(sql, *args)
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], encode_cursor(last["created_at"], last["id"]))
