"""Human output of the ``taskflow`` CLI: rich tables of tasks, executions, dead letters.

Every value is passed to rich as :class:`~rich.text.Text`, so brackets in payloads or
error messages are printed as they are, never read as rich markup. Times are shown in
UTC (``2026-11-29 15:03:28Z``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskflow_client.models import DeadLetter, Execution, Schedule, Task

STATUS_STYLES = {
    "queued": "cyan",
    "processing": "yellow",
    "retrying": "magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "succeeded": "green",
    "started": "yellow",
    "open": "bold red",
    "replayed": "green",
    "discarded": "dim",
}
ERROR_CHARS = 80
"""Errors are cut to this many characters in list tables (``get`` shows them whole)."""


def when(value: dt.datetime | None) -> str:
    """``2026-11-29 15:03:28Z`` (UTC, whole seconds); ``-`` for None."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def as_json(value: Any) -> str:
    """One-line JSON of a payload or result (``{"x": 1}``; non-ASCII kept as is)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def status(value: str) -> Text:
    """The status word, coloured by :data:`STATUS_STYLES`."""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _cut(value: str | None, limit: int = ERROR_CHARS) -> Text:
    if not value:
        return Text("-")
    line = " ".join(value.split())
    return Text(line if len(line) <= limit else line[: limit - 1] + "…")


def task_table(task: Task) -> Table:
    """One task as a two-column field/value table (payload and result as JSON)."""
    table = Table(box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Text]] = [
        ("id", Text(str(task.id))),
        ("type", Text(task.type)),
        ("status", status(task.status)),
        ("priority", Text(task.priority)),
        ("attempts", Text(f"{task.attempts}/{task.max_attempts}")),
        ("created", Text(when(task.created_at))),
        ("run at", Text(when(task.run_at))),
        ("started", Text(when(task.started_at))),
        ("finished", Text(when(task.finished_at))),
    ]
    if task.timeout_s is not None:
        rows.append(("timeout", Text(f"{task.timeout_s:g} s")))
    if task.schedule is not None:
        rows.append(("schedule", Text(f"{task.schedule} @ {when(task.scheduled_for)}")))
    if task.tags:
        rows.append(("tags", Text(", ".join(f"{k}={v}" for k, v in sorted(task.tags.items())))))
    rows.append(("payload", Text(as_json(task.payload))))
    if task.status == "completed" or task.result is not None:
        rows.append(("result", Text(as_json(task.result))))
    if task.last_error:
        rows.append(("last error", Text(task.last_error, style="red")))
    for name, value in rows:
        table.add_row(name, value)
    return table


def tasks_table(tasks: Iterable[Task]) -> Table:
    """Tasks one per row: id, type, status, priority, attempts, created, finished."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("type", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("priority", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    for t in tasks:
        table.add_row(
            Text(str(t.id)),
            Text(t.type),
            status(t.status),
            Text(t.priority),
            Text(f"{t.attempts}/{t.max_attempts}"),
            Text(when(t.created_at)),
            Text(when(t.finished_at)),
        )
    return table


def executions_table(items: Iterable[Execution]) -> Table:
    """Attempts one per row: attempt, status, worker, started, duration, error."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("worker", overflow="fold")
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold")
    for e in items:
        duration = "-" if e.duration_ms is None else f"{e.duration_ms:.0f} ms"
        table.add_row(
            Text(str(e.attempt)),
            status(e.status),
            Text(e.worker_id or "-"),
            Text(when(e.started_at)),
            Text(duration),
            _cut(e.error),
        )
    return table


def dead_letters_table(items: Iterable[DeadLetter]) -> Table:
    """Dead letters one per row: task id, type, status, attempts, failed at, error."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("task id", no_wrap=True)
    table.add_column("type", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("failed", no_wrap=True)
    table.add_column("error", overflow="fold")
    for d in items:
        table.add_row(
            Text(str(d.task_id) if d.task_id else f"(no task) {d.id}"),
            Text(d.type or "-"),
            status(d.status),
            Text("-" if d.attempts is None else str(d.attempts)),
            Text(when(d.failed_at)),
            _cut(d.error or d.reason),
        )
    return table


def cadence(schedule: Schedule) -> str:
    """``*/5 * * * * (Europe/Berlin)`` or ``every 30s``."""
    if schedule.cron is not None:
        return f"{schedule.cron} ({schedule.timezone})"
    return f"every {schedule.every_s:g}s"


def schedule_table(schedule: Schedule) -> Table:
    """One schedule as a field/value table: template, cadence, policies, fire times."""
    table = Table(box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    policy = f"missed {schedule.missed}"
    if schedule.missed == "catch_up":
        policy += f" (at most {schedule.catch_up_max})"
    rows = [
        ("name", Text(schedule.name)),
        ("cadence", Text(cadence(schedule))),
        ("state", Text("paused", style="yellow") if schedule.paused else Text("active")),
        ("policies", Text(f"{policy}, overlap {schedule.overlap}")),
        ("task type", Text(schedule.task_type)),
        ("priority", Text(schedule.priority)),
        ("payload", Text(as_json(schedule.payload))),
        ("next fire", Text(when(schedule.next_fire_at))),
        ("last fire", Text(when(schedule.last_fire_at))),
        ("last task", Text(str(schedule.last_task_id or "-"))),
        ("last run", status(schedule.last_run_status or "-")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def schedules_table(items: Iterable[Schedule]) -> Table:
    """Schedules one per row: name, cadence, state, type, next fire, last fire, last run."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "cadence", "state", "type", "next fire", "last fire", "last run"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("name", "cadence"))
    for s in items:
        table.add_row(
            Text(s.name),
            Text(cadence(s)),
            Text("paused" if s.paused else "active"),
            Text(s.task_type),
            Text(when(s.next_fire_at)),
            Text(when(s.last_fire_at)),
            status(s.last_run_status or "-"),
        )
    return table


def stdout_console() -> Console:
    """A console on stdout; off a terminal (pipe, file) wide enough not to cut ids."""
    console = Console()
    return console if console.is_terminal else Console(width=160)
