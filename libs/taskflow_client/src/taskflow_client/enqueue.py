"""Transactional enqueue: create a task inside the caller's own asyncpg transaction.

::

    from taskflow_client.enqueue import enqueue

    async with conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        task = await enqueue(conn, "email.receipt", {"order_id": 42})
    # The task exists if and only if this transaction committed.

The row is written by :func:`taskflow_common.store.submissions.submit`, the same statement
the ingest API runs, so the task is ``queued`` with ``dispatch_pending`` set. The dispatcher
learns of it from the outbox trigger's ``NOTIFY``, which Postgres delivers only at commit;
a rolled-back transaction leaves neither a row nor a notification, so nothing can run.
Outside a transaction the insert commits at once (like a REST submit).

Needs the ``enqueue`` extra (``pip install 'taskflow-client[enqueue]'``): it imports
``taskflow_common`` and ``asyncpg``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

from taskflow_client.errors import Conflict, FieldError, ValidationFailed
from taskflow_client.models import Priority, Task
from taskflow_common import spec as rules
from taskflow_common.errors import IdempotencyKeyReused
from taskflow_common.store import submissions
from taskflow_common.store.rows import task_json
from taskflow_common.subjects import PRIORITIES

# The limits are taskflow_common.spec's, which the ingest API's validation enforces too,
# so that enqueue accepts exactly what a REST submit accepts.
MAX_JSON_DEPTH = rules.DEFAULT_JSON_DEPTH
"""Deepest payload nesting accepted (the ingest API's default ``MAX_JSON_DEPTH``)."""
TAGS_RULE = rules.tags_rule("a mapping")


async def enqueue(
    conn: asyncpg.Connection,
    type: str,
    payload: Any = None,
    *,
    priority: Priority = "normal",
    max_attempts: int = 3,
    run_at: dt.datetime | None = None,
    delay_ms: int | None = None,
    timeout_s: float | None = None,
    tags: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Task:
    """Insert a ``queued`` task using ``conn`` (in its current transaction) and return it.

    ``payload``: any JSON value (None: ``{}``, as the REST API). ``max_attempts``:
    1..100. ``run_at`` (aware datetime) or ``delay_ms`` (milliseconds, 0..365 days)
    delays the first run (a past ``run_at`` means now); ``timeout_s`` (seconds, up to
    86400) bounds each attempt; ``tags``: up to 32 string values, keys without ``:``;
    ``idempotency_key``: 1..255 printable ASCII; a key already used for the same
    request returns that task, for a different request raises
    :class:`~taskflow_client.errors.Conflict` ``idempotency_key_reused``. The limits
    are the ingest API's, so enqueue accepts what a REST submit accepts.

    Everything is checked before any SQL runs: invalid input raises
    :class:`~taskflow_client.errors.ValidationFailed` (a ``ValueError``) whose
    ``errors`` name each field, as the REST API's 422 would. Database errors propagate
    as asyncpg raises them.

    ``conn`` may be any asyncpg connection. One whose ``jsonb`` codec already decodes
    to Python values (a TaskFlow pool, or ``set_type_codec("jsonb", ...)`` with a JSON
    encoder/decoder) is used as is; on one with asyncpg's default text codec, an
    orjson codec is installed for the insert and reset to the default afterwards
    (which also clears that connection's prepared-statement cache). Costs one extra
    round trip (``SELECT '{}'::jsonb``) to tell the two apart.
    """
    spec = _spec(
        type,
        {} if payload is None else payload,
        priority,
        max_attempts,
        run_at,
        delay_ms,
        timeout_s,
        tags,
        idempotency_key,
    )
    try:
        if await _decodes_json(conn):
            row, _ = await submissions.submit(conn, spec)
        else:
            await conn.set_type_codec(
                "jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog"
            )
            try:
                row, _ = await submissions.submit(conn, spec)
            finally:
                await conn.reset_type_codec("jsonb", schema="pg_catalog")
    except IdempotencyKeyReused as exc:
        raise Conflict(exc.code, str(exc)) from exc
    return Task.from_json(task_json(row))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _decodes_json(conn: asyncpg.Connection) -> bool:
    # asyncpg's default jsonb codec hands back the text; any JSON codec gives a dict.
    probe = await conn.fetchval("SELECT '{}'::jsonb")
    return not isinstance(probe, str)


def _spec(
    type: Any,
    payload: Any,
    priority: Any,
    max_attempts: Any,
    run_at: Any,
    delay_ms: Any,
    timeout_s: Any,
    tags: Any,
    idempotency_key: Any,
) -> rules.TaskSpec:
    problems: list[FieldError] = []

    def bad(name: str, message: str) -> None:
        problems.append(FieldError(name, message))

    if not isinstance(type, str) or not rules.TYPE_PATTERN.match(type):
        bad("type", rules.TYPE_RULE)
    problems += [
        FieldError(f, m) for f, m in rules.json_problems(payload, "payload", MAX_JSON_DEPTH)
    ]
    if priority not in PRIORITIES:
        bad("priority", rules.PRIORITY_RULE)
    if not _is_int(max_attempts) or not rules.MIN_ATTEMPTS <= max_attempts <= rules.MAX_ATTEMPTS:
        bad("max_attempts", rules.ATTEMPTS_RULE)
    if run_at is not None and (not isinstance(run_at, dt.datetime) or run_at.tzinfo is None):
        bad("run_at", "must be an aware datetime (with a UTC offset)")
    if delay_ms is not None and (not _is_int(delay_ms) or not 0 <= delay_ms <= rules.MAX_DELAY_MS):
        bad("delay_ms", rules.DELAY_RULE)
    elif delay_ms is not None and run_at is not None:
        bad("delay_ms", rules.BOTH_RULE)
    if timeout_s is not None and (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not math.isfinite(timeout_s)
        or not 0 < timeout_s <= rules.MAX_TIMEOUT_S
    ):
        bad("timeout_s", rules.TIMEOUT_RULE)
    if tags is not None and not rules.tags_ok(tags):
        bad("tags", TAGS_RULE)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not rules.IDEMPOTENCY_KEY_PATTERN.match(idempotency_key)
    ):
        bad("idempotency_key", rules.IDEMPOTENCY_KEY_RULE)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValidationFailed(
            "validation_error", f"{first.field}: {first.message}{more}", errors=problems
        )
    return rules.TaskSpec(
        type=type,
        payload=payload,
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        timeout_s=None if timeout_s is None else float(timeout_s),
        tags=dict(tags) if tags else None,
        run_at=run_at,
        delay_s=None if delay_ms is None else delay_ms / 1000,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
