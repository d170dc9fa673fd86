"""Schedule methods of :class:`taskflow_client.sync_client.Client` (a mixin).

The REST shape is ``/api/v1/schedules`` (see the README's "Schedules" section); the calls
themselves are built in :mod:`taskflow_client.schedule_calls`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from taskflow_client import schedule_calls
from taskflow_client.calls import Call, Page
from taskflow_client.models import Priority, Schedule, Task
from taskflow_client.schedule_calls import Every, NewSchedule

T = TypeVar("T")


class ScheduleMethods:
    """Create, read, change, pause, resume, run and delete schedules."""

    def _send(self, call: Call[T]) -> T:
        raise NotImplementedError  # provided by the client class

    def _pages(
        self, make: Callable[[int, str | None], Call[Page[T]]], page_size: int, limit: int | None
    ) -> Iterator[T]:
        raise NotImplementedError  # provided by the client class

    def create_schedule(
        self,
        name: str,
        type: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        every: Every | None = None,
        priority: Priority = "normal",
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        tags: Mapping[str, str] | None = None,
        missed: str | None = None,
        catch_up_max: int | None = None,
        overlap: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Create a schedule; see :meth:`AsyncClient.create_schedule`."""
        new = NewSchedule(
            name,
            type,
            payload,
            cron,
            timezone,
            every,
            priority,
            max_attempts,
            timeout_s,
            tags,
            missed,
            catch_up_max,
            overlap,
            paused,
        )
        return self._send(schedule_calls.create(new))

    def get_schedule(self, name: str) -> Schedule:
        """Return the schedule ``name``; see :meth:`AsyncClient.get_schedule`."""
        return self._send(schedule_calls.get(name))

    def schedules(
        self, *, paused: bool | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[Schedule]:
        """Iterate over schedules by name; see :meth:`AsyncClient.schedules`."""

        def make(size: int, cursor: str | None) -> Call[Page[Schedule]]:
            return schedule_calls.list_schedules(paused=paused, limit=size, cursor=cursor)

        return self._pages(make, page_size, limit)

    def update_schedule(
        self,
        name: str,
        *,
        task: Mapping[str, Any] | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        every: Every | None = None,
        missed: str | None = None,
        catch_up_max: int | None = None,
        overlap: str | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """Change a schedule; see :meth:`AsyncClient.update_schedule`."""
        body = schedule_calls.change_body(
            task=task,
            cron=cron,
            timezone=timezone,
            every=every,
            missed=missed,
            catch_up_max=catch_up_max,
            overlap=overlap,
            paused=paused,
        )
        return self._send(schedule_calls.update(name, body))

    def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule; see :meth:`AsyncClient.pause_schedule`."""
        return self._send(schedule_calls.action(name, "pause"))

    def resume_schedule(self, name: str) -> Schedule:
        """Resume a schedule; see :meth:`AsyncClient.resume_schedule`."""
        return self._send(schedule_calls.action(name, "resume"))

    def run_schedule(self, name: str) -> Task:
        """Create one task from the schedule now; see :meth:`AsyncClient.run_schedule`."""
        return self._send(schedule_calls.run(name))

    def delete_schedule(self, name: str) -> None:
        """Delete a schedule; see :meth:`AsyncClient.delete_schedule`."""
        self._send(schedule_calls.delete(name))
