"""The schedules' REST calls as data (no I/O), like :mod:`taskflow_client.calls`.

Both clients send these :class:`~taskflow_client.calls.Call` objects; the request bodies
are built here from Python values: an interval (``every``) may be a duration string
(``30s``), a number of seconds or a :class:`datetime.timedelta`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from taskflow_client import errors
from taskflow_client.calls import Call, Page, query
from taskflow_client.models import Priority, Schedule, Task

Every = str | float | dt.timedelta
"""An interval: ``"30s"``/``"5m"``, seconds, or a ``timedelta``."""
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule to create: a name, the task template, one cadence, the policies.

    Give ``cron`` (5 fields, or 6 with seconds first; read in ``timezone``, default UTC)
    or ``every`` (at least 1 s). ``missed``: ``skip`` (default) or ``catch_up`` (at most
    ``catch_up_max`` ticks); ``overlap``: ``allow`` (default), ``skip`` or ``queue``.
    None leaves an option to the server's default.
    """

    name: str
    type: str
    payload: Any = None
    cron: str | None = None
    timezone: str | None = None
    every: Every | None = None
    priority: Priority = "normal"
    max_attempts: int | None = None
    timeout_s: float | None = None
    tags: Mapping[str, str] | None = None
    missed: str | None = None
    catch_up_max: int | None = None
    overlap: str | None = None
    paused: bool = False

    def body(self) -> dict[str, Any]:
        """Return the ``POST /schedules`` body (unset options left out)."""
        task: dict[str, Any] = {"type": self.type, "priority": self.priority}
        _put(task, payload=self.payload, max_attempts=self.max_attempts)
        _put(task, timeout_s=self.timeout_s, tags=dict(self.tags) if self.tags else None)
        doc: dict[str, Any] = {"name": self.name, "task": task}
        _put(doc, cron=self.cron, timezone=self.timezone, every=every_value(self.every))
        _put(doc, missed=self.missed, catch_up_max=self.catch_up_max, overlap=self.overlap)
        if self.paused:
            doc["paused"] = True
        return doc


def _put(doc: dict[str, Any], **values: Any) -> None:
    doc.update((k, v) for k, v in values.items() if v is not None)


def every_value(every: Every | None) -> str | float | None:
    """An interval as the API takes it: strings and numbers as they are, timedelta as s."""
    if isinstance(every, dt.timedelta):
        return every.total_seconds()
    return every


def name(value: str) -> str:
    """Return ``value`` for a URL path; raise NotFound for a name no schedule can have."""
    if not _NAME.match(value):
        raise errors.NotFound("not_found", f"schedule {value[:130]!r} not found", status=404)
    return quote(value, safe="")


def change_body(
    *,
    task: Mapping[str, Any] | None,
    cron: str | None,
    timezone: str | None,
    every: Every | None,
    missed: str | None,
    catch_up_max: int | None,
    overlap: str | None,
    paused: bool | None,
) -> dict[str, Any]:
    """The ``PATCH`` body: only the members given (None: unchanged)."""
    doc: dict[str, Any] = {}
    if task is not None:
        doc["task"] = dict(task)
    _put(doc, cron=cron, timezone=timezone, every=every_value(every), missed=missed)
    _put(doc, catch_up_max=catch_up_max, overlap=overlap, paused=paused)
    return doc


def _schedule(doc: Any) -> Schedule:
    return Schedule.from_json(doc["schedule"])


def _page(doc: Any) -> Page[Schedule]:
    return Page([Schedule.from_json(s) for s in doc["items"]], doc.get("next_cursor"))


def _task(doc: Any) -> Task:
    return Task.from_json(doc["task"])


def _nothing(doc: Any) -> None:
    return None


def create(new: NewSchedule) -> Call[Schedule]:
    """``POST /schedules`` (201; 409 ``schedule_exists``; 422 naming the field)."""
    return Call("POST", "api", "/schedules", _schedule, json=new.body())


def get(schedule: str) -> Call[Schedule]:
    """``GET /schedules/{name}``."""
    return Call("GET", "api", f"/schedules/{name(schedule)}", _schedule)


def list_schedules(*, paused: bool | None, limit: int, cursor: str | None) -> Call[Page[Schedule]]:
    """``GET /schedules`` (by name) with an optional paused filter and a page cursor."""
    flag = None if paused is None else str(paused).lower()
    params = [*query(paused=flag, cursor=cursor), ("limit", str(limit))]
    return Call("GET", "api", "/schedules", _page, params=params)


def update(schedule: str, body: Mapping[str, Any]) -> Call[Schedule]:
    """``PATCH /schedules/{name}`` with :func:`change_body`."""
    return Call("PATCH", "api", f"/schedules/{name(schedule)}", _schedule, json=dict(body))


def action(schedule: str, verb: str) -> Call[Schedule]:
    """``POST /schedules/{name}/pause`` or ``/resume``."""
    return Call("POST", "api", f"/schedules/{name(schedule)}/{verb}", _schedule)


def run(schedule: str) -> Call[Task]:
    """``POST /schedules/{name}/run``: one task from the template now."""
    return Call("POST", "api", f"/schedules/{name(schedule)}/run", _task)


def delete(schedule: str) -> Call[None]:
    """``DELETE /schedules/{name}`` (204)."""
    return Call("DELETE", "api", f"/schedules/{name(schedule)}", _nothing)
