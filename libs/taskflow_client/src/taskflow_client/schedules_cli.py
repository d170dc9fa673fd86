"""``taskflow schedules ...``: create, list, show, change, pause, resume, run and delete.

A Typer sub-app mounted by :mod:`taskflow_client.cli`; same options (``--api-url``,
``--json``) and exit codes (:mod:`taskflow_client.cli_base`): 2 for input the API
rejected (422: an invalid cron, an unknown zone, an interval under 1 s), 3 for an unknown
name, 5 for a name already in use (409 ``schedule_exists``).
"""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from taskflow_client import render
from taskflow_client.cli_base import (
    EXIT_USAGE,
    ApiUrl,
    AsJson,
    api_errors,
    fail,
    parse_payload,
    parse_tags,
    print_json,
)
from taskflow_client.endpoints import DEFAULT_API_URL
from taskflow_client.models import Schedule
from taskflow_client.sync_client import Client


class Priority(enum.StrEnum):
    """``--priority`` values."""

    high = "high"
    normal = "normal"
    low = "low"


class Missed(enum.StrEnum):
    """``--missed`` values: what happens to ticks missed while down or paused."""

    skip = "skip"
    catch_up = "catch_up"


class Overlap(enum.StrEnum):
    """``--overlap`` values: a tick while the last run is still going."""

    allow = "allow"
    skip = "skip"
    queue = "queue"


schedules_app = typer.Typer(
    no_args_is_help=True, help="Schedules: periodic tasks (cron in a time zone, or every N)."
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Schedule name.")]
Cron = Annotated[str | None, typer.Option(help="Cron expression, 5 fields (or 6, seconds first).")]
Zone = Annotated[str | None, typer.Option(help="IANA time zone of --cron (default UTC).")]
Every = Annotated[str | None, typer.Option(help="Fixed interval instead of --cron: 30s, 5m.")]
MissedOpt = Annotated[Missed | None, typer.Option(help="Missed ticks: skip or catch_up.")]
CatchUp = Annotated[
    int | None, typer.Option(min=1, max=1000, help="catch_up: at most this many missed ticks.")
]
OverlapOpt = Annotated[Overlap | None, typer.Option(help="Tick during a run: allow|skip|queue.")]
MaxAttempts = Annotated[int | None, typer.Option(min=1, max=100, help="Attempts per task.")]
Timeout = Annotated[float | None, typer.Option("--timeout", min=0, help="Seconds per attempt.")]
Tags = Annotated[
    list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="A tag; repeatable.")
]


def _show(schedule: Schedule, as_json: bool) -> None:
    if as_json:
        print_json(dict(schedule.raw))
    else:
        render.stdout_console().print(render.schedule_table(schedule))


@schedules_app.command("create")
def create(
    name: NameArg,
    task_type: Annotated[str, typer.Argument(metavar="TYPE", help="Task type (handler).")],
    payload: Annotated[
        str | None, typer.Argument(metavar="PAYLOAD_JSON", help="Payload JSON; '-': stdin.")
    ] = None,
    cron: Cron = None,
    timezone: Zone = None,
    every: Every = None,
    priority: Annotated[Priority, typer.Option(help="Queue priority.")] = Priority.normal,
    max_attempts: MaxAttempts = None,
    timeout: Timeout = None,
    tag: Tags = None,
    missed: MissedOpt = None,
    catch_up_max: CatchUp = None,
    overlap: OverlapOpt = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Create a schedule: --cron (with --timezone) or --every."""
    if (cron is None) == (every is None):
        fail("give either --cron or --every", EXIT_USAGE)
    body, tags = parse_payload(payload), parse_tags(tag)
    with api_errors(), Client(api_url) as tf:
        schedule = tf.create_schedule(
            name,
            task_type,
            body,
            cron=cron,
            timezone=timezone,
            every=every,
            priority=priority.value,
            max_attempts=max_attempts,
            timeout_s=timeout,
            tags=tags,
            missed=missed.value if missed else None,
            catch_up_max=catch_up_max,
            overlap=overlap.value if overlap else None,
            paused=paused,
        )
    _show(schedule, as_json)


@schedules_app.command("list")
def list_command(
    paused: Annotated[
        bool | None, typer.Option("--paused/--active", help="Only paused / only active ones.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """List schedules by name."""
    with api_errors(), Client(api_url) as tf:
        items = list(tf.schedules(paused=paused, page_size=min(limit, 200), limit=limit))
    if as_json:
        print_json([dict(s.raw) for s in items])
    else:
        render.stdout_console().print(render.schedules_table(items))


@schedules_app.command("get")
def get(name: NameArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Show a schedule: cadence, policies, next and last fire, the last run's status."""
    with api_errors(), Client(api_url) as tf:
        schedule = tf.get_schedule(name)
    _show(schedule, as_json)


@schedules_app.command("update")
def update(
    name: NameArg,
    task_type: Annotated[str | None, typer.Option("--type", help="New task type.")] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", metavar="JSON", help="New payload; '-': stdin.")
    ] = None,
    priority: Annotated[Priority | None, typer.Option(help="New priority.")] = None,
    max_attempts: MaxAttempts = None,
    timeout: Timeout = None,
    cron: Cron = None,
    timezone: Zone = None,
    every: Every = None,
    missed: MissedOpt = None,
    catch_up_max: CatchUp = None,
    overlap: OverlapOpt = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Change a schedule (only what is given); a new cadence re-times it from now."""
    task: dict[str, object] = {}
    if task_type is not None:
        task["type"] = task_type
    if payload is not None:
        task["payload"] = parse_payload(payload)
    if priority is not None:
        task["priority"] = priority.value
    if max_attempts is not None:
        task["max_attempts"] = max_attempts
    if timeout is not None:
        task["timeout_s"] = timeout
    with api_errors(), Client(api_url) as tf:
        schedule = tf.update_schedule(
            name,
            task=task or None,
            cron=cron,
            timezone=timezone,
            every=every,
            missed=missed.value if missed else None,
            catch_up_max=catch_up_max,
            overlap=overlap.value if overlap else None,
        )
    _show(schedule, as_json)


@schedules_app.command("pause")
def pause(name: NameArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Pause a schedule: no tick fires until it is resumed."""
    with api_errors(), Client(api_url) as tf:
        schedule = tf.pause_schedule(name)
    _show(schedule, as_json)


@schedules_app.command("resume")
def resume(name: NameArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Resume a schedule: ticks missed while paused follow its missed-tick policy."""
    with api_errors(), Client(api_url) as tf:
        schedule = tf.resume_schedule(name)
    _show(schedule, as_json)


@schedules_app.command("run")
def run(name: NameArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Create one task from the schedule's template now (paused or not); show the task."""
    with api_errors(), Client(api_url) as tf:
        task = tf.run_schedule(name)
    if as_json:
        print_json(dict(task.raw))
    else:
        render.stdout_console().print(render.task_table(task))


@schedules_app.command("delete")
def delete(name: NameArg, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Delete a schedule (the tasks it made stay)."""
    with api_errors(), Client(api_url) as tf:
        tf.delete_schedule(name)
    print(f"deleted schedule {name}")
