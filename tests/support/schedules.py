"""Helpers of the schedule tests: demo schedules, a ticker on a fresh registry, tick reads."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable

import asyncpg
from prometheus_client import CollectorRegistry

from taskflow_common.cadence import Cadence
from taskflow_common.db import Database
from taskflow_common.store.schedules import ScheduleSpec
from taskflow_common.ticks import Policy
from taskflow_dispatcher.maintenance_metrics import MaintenanceMetrics
from taskflow_dispatcher.schedules import ScheduleTicker

UTC = dt.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def ticker(database: Database, **kwargs: object) -> ScheduleTicker:
    return ScheduleTicker(
        database,
        MaintenanceMetrics(CollectorRegistry()),
        default_max_attempts=3,
        **kwargs,  # type: ignore[arg-type]
    )


def _spec(name: str, cadence: Cadence, kwargs: dict[str, object]) -> ScheduleSpec:
    """A demo schedule; ``missed``/``catch_up_max``/``overlap`` build its Policy."""
    policy = {k: kwargs.pop(k) for k in ("missed", "catch_up_max", "overlap") if k in kwargs}
    if policy:
        kwargs["policy"] = Policy(**policy)  # type: ignore[arg-type]
    return ScheduleSpec(name, "demo", cadence, **kwargs)  # type: ignore[arg-type]


def every(name: str, seconds: str = "1s", **kwargs: object) -> ScheduleSpec:
    return _spec(name, Cadence.parse(every=seconds), kwargs)


def cron(name: str, expr: str, zone: str = "Europe/Berlin", **kwargs: object) -> ScheduleSpec:
    return _spec(name, Cadence.parse(cron=expr, timezone=zone), kwargs)


async def ticks_of(conn: asyncpg.Connection, name: str) -> list[dt.datetime]:
    rows = await conn.fetch(
        "SELECT scheduled_for FROM tasks WHERE schedule = $1 ORDER BY scheduled_for", name
    )
    return [r["scheduled_for"] for r in rows]


def seconds(values: Iterable[int]) -> list[dt.datetime]:
    return [T0 + dt.timedelta(seconds=s) for s in values]


async def set_last_run(conn: asyncpg.Connection, name: str, status: str) -> None:
    """Play the worker: move the schedule's last task to ``status`` (finished now if terminal)."""
    await conn.execute(
        """UPDATE tasks SET status = $2,
                  finished_at = CASE WHEN $2 IN ('completed', 'failed', 'cancelled')
                                     THEN now() END
            WHERE id = (SELECT last_task_id FROM schedules WHERE name = $1)""",
        name,
        status,
    )
