"""Dead-letter counts for the operators: by type, by error and by status over time windows.

One statement (``GROUPING SETS``) over ``dead_letters``; windows are by ``failed_at``
against the database clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import asyncpg

from taskflow_common.store.rows import DEAD_LETTER_STATUSES

STATS_WINDOWS: tuple[tuple[str, dt.timedelta | None], ...] = (
    ("1h", dt.timedelta(hours=1)),
    ("24h", dt.timedelta(hours=24)),
    ("7d", dt.timedelta(days=7)),
    ("all", None),
)
"""Stats windows: label and length (None = since the first dead letter)."""
STATS_ERROR_CHARS = 200
"""An error is grouped in stats by its first line, cut to this many characters."""
STATS_TOP = 50
"""At most this many types and errors are listed in stats (the most frequent overall)."""


async def stats(conn: asyncpg.Connection) -> dict[str, Any]:
    """Count dead letters by type and by error over the windows 1h, 24h, 7d and all.

    Windows are by ``failed_at`` against the database clock. An error is grouped by
    the first line of ``error`` (or ``reason`` when there is no error), cut to
    :data:`STATS_ERROR_CHARS` characters. Returns::

        {"windows": ["1h", "24h", "7d", "all"],
         "total": {"1h": n, "24h": n, "7d": n, "all": n},
         "by_status": {"open": n, "replayed": n, "discarded": n},
         "by_type": [{"type": str | None, "counts": {"1h": n, ...}}, ...],
         "by_error": [{"error": str, "counts": {"1h": n, ...}}, ...]}

    Lists hold the :data:`STATS_TOP` most frequent entries overall, most frequent first.
    """
    counts = ", ".join(
        f"count(*) FILTER (WHERE failed_at > now() - interval '{int(span.total_seconds())} "
        f"seconds') AS w{i}"
        if span is not None
        else f"count(*) AS w{i}"
        for i, (_, span) in enumerate(STATS_WINDOWS)
    )
    rows = await conn.fetch(
        f"""
        WITH d AS (
            SELECT type, status, failed_at,
                   left(split_part(coalesce(error, reason), E'\\n', 1), {STATS_ERROR_CHARS})
                       AS first_line
            FROM dead_letters
        )
        SELECT GROUPING(type) AS g_type, GROUPING(first_line) AS g_error,
               GROUPING(status) AS g_status, type, first_line, status, {counts}
        FROM d
        GROUP BY GROUPING SETS ((type), (first_line), (status), ())
        """  # noqa: S608 - constant column lists; window lengths are constants
    )
    labels = [label for label, _ in STATS_WINDOWS]

    def window_counts(row: Mapping[str, Any]) -> dict[str, int]:
        return {label: int(row[f"w{i}"]) for i, label in enumerate(labels)}

    total = dict.fromkeys(labels, 0)
    by_status = dict.fromkeys(DEAD_LETTER_STATUSES, 0)
    by_type: list[dict[str, Any]] = []
    by_error: list[dict[str, Any]] = []
    for row in rows:
        if not row["g_type"]:
            by_type.append({"type": row["type"], "counts": window_counts(row)})
        elif not row["g_error"]:
            by_error.append({"error": row["first_line"], "counts": window_counts(row)})
        elif not row["g_status"]:
            by_status[row["status"]] = int(row[f"w{len(labels) - 1}"])
        else:
            total = window_counts(row)

    def top(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        items.sort(key=lambda item: (-item["counts"]["all"], str(item[key])))
        return items[:STATS_TOP]

    return {
        "windows": labels,
        "total": total,
        "by_status": by_status,
        "by_type": top(by_type, "type"),
        "by_error": top(by_error, "error"),
    }
