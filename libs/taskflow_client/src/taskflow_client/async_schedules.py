"""Schedule methods of :class:`taskflow_client.async_client.AsyncClient` (a mixin).

The REST shape is ``/api/v1/schedules`` (see the README's "Schedules" section); the calls
themselves are built in :mod:`taskflow_client.schedule_calls`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from taskflow_client import schedule_calls
from taskflow_client.calls import Call, Page
from taskflow_client.models import Priority, Schedule, Task
from taskflow_client.schedule_calls import Every, NewSchedule

T = TypeVar("T")


class AsyncScheduleMethods:
    """Create, read, change, pause, resume, run and delete schedules."""

    async def _send(self, call: Call[T]) -> T:
        raise NotImplementedError  # provided by the client class

    def _pages(
        self, make: Callable[[int, str | None], Call[Page[T]]], page_size: int, limit: int | None
    ) -> AsyncIterator[T]:
        raise NotImplementedError  # provided by the client class

    async def create_schedule(
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
        """Create a schedule and return it (the arguments of :class:`NewSchedule`).

        Give ``cron`` (with an optional IANA ``timezone``) or ``every`` (``"30s"``,
        seconds, or a timedelta; at least 1 s). Raises ValidationFailed (422 naming the
        field: an invalid cron, an unknown zone, an interval under 1 s, a bad policy),
        Conflict ``schedule_exists`` for a name in use; nothing is stored then.
        """
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
        return await self._send(schedule_calls.create(new))

    async def get_schedule(self, name: str) -> Schedule:
        """Return the schedule ``name`` (with its next and last fire times). Raises NotFound."""
        return await self._send(schedule_calls.get(name))

    async def schedules(
        self, *, paused: bool | None = None, page_size: int = 50, limit: int | None = None
    ) -> AsyncIterator[Schedule]:
        """Iterate over schedules by name (``paused``: only paused or only active ones)."""

        def make(size: int, cursor: str | None) -> Call[Page[Schedule]]:
            return schedule_calls.list_schedules(paused=paused, limit=size, cursor=cursor)

        async for schedule in self._pages(make, page_size, limit):
            yield schedule

    async def update_schedule(
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
        """Change a schedule; None leaves a member as it is; return the new schedule.

        ``task`` holds the template members to replace (``{"payload": {...}}``). A new
        ``cron``/``timezone``/``every`` re-times the schedule from now. Raises NotFound,
        ValidationFailed (nothing changed).
        """
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
        return await self._send(schedule_calls.update(name, body))

    async def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule (no tick fires until it is resumed); return it."""
        return await self._send(schedule_calls.action(name, "pause"))

    async def resume_schedule(self, name: str) -> Schedule:
        """Resume a schedule (missed ticks follow its missed-tick policy); return it."""
        return await self._send(schedule_calls.action(name, "resume"))

    async def run_schedule(self, name: str) -> Task:
        """Create one task from the schedule's template now (paused or not); return it."""
        return await self._send(schedule_calls.run(name))

    async def delete_schedule(self, name: str) -> None:
        """Delete a schedule (the tasks it made stay). Raises NotFound."""
        await self._send(schedule_calls.delete(name))
