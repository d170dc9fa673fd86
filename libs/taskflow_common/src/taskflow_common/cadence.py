"""When a schedule fires: cron expressions in an IANA time zone, or a fixed interval.

A :class:`Cadence` is parsed once (:meth:`Cadence.parse`, which raises
:class:`InvalidCadence` naming the field) and then answers "which ticks fall in this
window" and "which tick comes after this instant". Every instant in and out is an aware
``datetime``; ticks come out in UTC.

**Cron** (parsed and matched by ``cronsim``, the evaluator healthchecks.io runs): 5 fields
(minute hour day-of-month month day-of-week) or 6 with seconds first (second minute hour
...), names (``MON``, ``JAN``), ``L``/``LW``/``#`` and the macros ``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly``. Fields are matched in the schedule's zone.

**Daylight saving time** follows Debian cron (and cronsim), decided by the minute and hour
fields:

- both fixed (``30 2 * * *``, ``0 0 9 * * MON``): a *time of day*. A local time that
  occurs twice (the autumn hour) fires once, at its first occurrence. A local time that
  does not occur (the spring gap) fires at the next valid time, the moment the clocks
  jump (02:30 in Europe/Berlin on the last Sunday of March fires at 03:00+02:00);
  several ticks of one gap fire once.
- either starts with ``*`` (``0 * * * *``, ``*/15 * * * *``): *elapsed time*. The
  schedule follows real time: the repeated hour fires in both of its occurrences and the
  skipped hour, which does not exist, does not fire. An hourly job stays hourly.

cronsim itself applies the time-of-day rule only to 5-field expressions; this module
applies it to 6-field ones as well (iterating local wall time with cronsim and resolving
each wall time itself), so adding a seconds field never changes the DST behaviour.

**Interval** (``every``, at least 1 s): ticks ``origin + k * every``, where ``origin`` is a
tick already known (the schedule's stored next fire time), so the phase never drifts;
DST does not apply. A new interval schedule first fires one interval after it is
created, on the whole second.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field

import cronsim

from taskflow_common.config import parse_duration
from taskflow_common.errors import TaskFlowError

UTC = dt.UTC
MIN_EVERY_S = 1.0
"""Shortest interval, seconds (also the finest cron resolution)."""
MAX_EVERY_S = 366 * 86400.0
"""Longest interval, seconds (a year; longer cadences want a cron expression)."""
SCAN_LIMIT = 10_000
"""Most cron ticks one question walks (counting a long gap stops there; ~7 µs a tick)."""
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECOND = dt.timedelta(seconds=1)
_MINUTE = dt.timedelta(minutes=1)
# How far a wall clock can stand from UTC differently at two instants (the largest DST
# shift in the tz database is 2 h, at Troll station); reverse walks start that much later.
_MAX_SHIFT = dt.timedelta(hours=3)


class InvalidCadence(TaskFlowError, ValueError):
    """A cron expression, time zone or interval that cannot be used.

    ``field`` names the request field at fault (``cron``, ``timezone`` or ``every``);
    the message says what is accepted.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Cadence:
    """A parsed cron expression with its zone, or an interval; build with :meth:`parse`.

    ``cron`` is the normalised expression (macros expanded, single spaces) or None;
    ``timezone`` the IANA name (``UTC`` for intervals); ``every_s`` the interval in
    seconds or None. Exactly one of ``cron`` and ``every_s`` is set.
    """

    cron: str | None
    timezone: str
    every_s: float | None
    _zone: zoneinfo.ZoneInfo = field(repr=False, compare=False)
    _wall: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def parse(
        cls, *, cron: str | None = None, timezone: str | None = None, every: object = None
    ) -> Cadence:
        """Validate one cadence: ``cron`` (+ optional ``timezone``, default UTC) or ``every``.

        ``every`` is a duration (``30s``, ``5m``, ``1h``, ``1d``, or a number of seconds)
        of at least :data:`MIN_EVERY_S` and at most :data:`MAX_EVERY_S`. Raises
        :class:`InvalidCadence` (field ``cron``, ``timezone`` or ``every``) for both or
        neither given, a malformed or never-firing expression, an unknown zone, or a bad
        interval.
        """
        if (cron is None) == (every is None):
            raise InvalidCadence("cron", "give either cron (with an optional timezone) or every")
        if every is not None:
            if timezone is not None:
                raise InvalidCadence("timezone", "timezone applies to cron schedules only")
            return cls(None, "UTC", _parse_every(every), zoneinfo.ZoneInfo("UTC"))
        assert cron is not None
        zone_name = "UTC" if timezone is None else timezone
        zone = _parse_zone(zone_name)
        expr, wall = _parse_cron(cron)
        cadence = cls(expr, zone_name, None, zone, wall)
        try:
            next(cadence._forward(dt.datetime.now(UTC)))
        except StopIteration:
            raise InvalidCadence("cron", f"cron {cron!r} never fires") from None
        return cadence

    @property
    def every(self) -> dt.timedelta | None:
        """The interval as a ``timedelta`` (microsecond resolution), or None for cron."""
        return None if self.every_s is None else dt.timedelta(seconds=self.every_s)

    # -- questions --------------------------------------------------------------------

    def first_tick(self, now: dt.datetime) -> dt.datetime:
        """Return the first tick of a schedule created (or re-timed) at ``now``.

        Cron: the first tick after ``now``. Interval: ``now`` on the whole second plus
        one interval.
        """
        step = self.every
        if step is None:
            return self.after(now, now)
        return now.astimezone(UTC).replace(microsecond=0) + step

    def after(self, t: dt.datetime, origin: dt.datetime) -> dt.datetime:
        """Return the first tick strictly after ``t`` (UTC).

        ``origin`` is a known tick (the schedule's stored next fire time); intervals
        count from it (ticks before ``origin`` are never returned), cron ignores it.
        Raises ``ValueError`` if a cron expression has no tick in the 50 years after ``t``.
        """
        step = self.every
        if step is not None:
            if t < origin:
                return origin.astimezone(UTC)
            return (origin + ((t - origin) // step + 1) * step).astimezone(UTC)
        for tick in self._forward(t):
            return tick
        raise ValueError(f"cron {self.cron!r} has no tick after {t.isoformat()}")

    def ticks(
        self, start: dt.datetime, end: dt.datetime, *, limit: int = SCAN_LIMIT
    ) -> list[dt.datetime]:
        """Return the ticks ``t`` with ``start <= t <= end``, oldest first, at most ``limit``.

        ``start`` is a tick of this cadence (for intervals, the origin of the count).
        """
        step = self.every
        out: list[dt.datetime] = []
        if start > end or limit <= 0:
            return out
        if step is not None:
            count = min((end - start) // step + 1, limit)
            return [(start + k * step).astimezone(UTC) for k in range(count)]
        for tick in self._forward(start - dt.timedelta(microseconds=1)):
            if tick > end or len(out) >= limit:
                break
            out.append(tick)
        return out

    def count(self, start: dt.datetime, end: dt.datetime, *, cap: int = SCAN_LIMIT) -> int:
        """Count the ticks in ``[start, end)`` (``start`` a tick); cron counts stop at ``cap``."""
        step = self.every
        if start >= end:
            return 0
        if step is not None:
            return -((start - end) // step)  # ceil((end - start) / step)
        n = 0
        for tick in self._forward(start - dt.timedelta(microseconds=1)):
            if tick >= end or n >= cap:
                break
            n += 1
        return n

    def latest(self, start: dt.datetime, end: dt.datetime, n: int) -> list[dt.datetime]:
        """Return the newest ``n`` ticks in ``[start, end)``, oldest first (``start`` a tick)."""
        step = self.every
        if start >= end or n <= 0:
            return []
        if step is not None:
            total = -((start - end) // step)
            first = max(0, total - n)
            return [(start + k * step).astimezone(UTC) for k in range(first, total)]
        newest: list[dt.datetime] = []
        for tick in self._backward(end):
            if tick < start or len(newest) >= n:
                break
            newest.append(tick)
        newest.reverse()
        return newest

    # -- cron walking -------------------------------------------------------------------

    def _forward(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Ticks strictly after ``after``, increasing, in UTC (cron only)."""
        assert self.cron is not None
        local = after.astimezone(self._zone)
        if not self._wall:
            for tick in cronsim.CronSim(self.cron, local):
                yield tick.astimezone(UTC)
            return
        last: dt.datetime | None = None
        # Wall times after ``after``'s own wall time cover every instant after it
        # (resolving a wall time never moves it earlier than its first occurrence).
        for wall in cronsim.CronSim(self.cron, local.replace(tzinfo=None)):
            tick = _resolve(wall, self._zone)
            if tick > after and tick != last:
                last = tick
                yield tick

    def _backward(self, before: dt.datetime) -> Iterator[dt.datetime]:
        """Ticks strictly before ``before``, decreasing, in UTC (cron only)."""
        assert self.cron is not None
        local = before.astimezone(self._zone)
        if not self._wall:
            for tick in cronsim.CronSim(self.cron, local, reverse=True):
                yield tick.astimezone(UTC)
            return
        last: dt.datetime | None = None
        # Inside a repeated hour a later wall time can resolve to an earlier instant, so
        # the walk starts a DST shift later than ``before`` and filters.
        start = local.replace(tzinfo=None) + _MAX_SHIFT
        for wall in cronsim.CronSim(self.cron, start, reverse=True):
            tick = _resolve(wall, self._zone)
            if tick < before and tick != last:
                last = tick
                yield tick


def _parse_every(value: object) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise InvalidCadence(
            "every", "every must be a duration such as 30s, 5m, 1h or 1d"
        ) from None
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise InvalidCadence("every", "every must be at least 1s and at most 366d")
    return seconds


def _parse_zone(name: str) -> zoneinfo.ZoneInfo:
    if not name or len(name) > 64 or name != name.strip():
        raise InvalidCadence("timezone", f"unknown time zone {name!r} (use an IANA name)")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidCadence(
            "timezone", f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)"
        ) from None


def _parse_cron(text: str) -> tuple[str, bool]:
    """Normalise and check ``text``; return ``(expression, time_of_day)``."""
    expr = " ".join(text.split())
    expr = CRON_MACROS.get(expr.lower(), expr)
    parts = expr.split()
    if len(parts) not in (5, 6):
        raise InvalidCadence(
            "cron", "cron needs 5 fields (minute hour day month weekday) or 6 (seconds first)"
        )
    try:
        cronsim.CronSim(expr, dt.datetime(2000, 1, 1))  # noqa: DTZ001 - syntax check only
    except cronsim.CronSimError as exc:
        raise InvalidCadence("cron", f"invalid cron {text!r}: {exc}") from None
    minute, hour = (parts[0], parts[1]) if len(parts) == 5 else (parts[1], parts[2])
    return expr, not minute.startswith("*") and not hour.startswith("*")


def _resolve(wall: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """Return the instant (UTC) a naive local ``wall`` time fires at, by the time-of-day rule.

    A repeated wall time resolves to its first occurrence (``fold=0``); a wall time in a
    gap to the first valid minute after it, the moment the clocks jumped.
    """
    aware = wall.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return aware.astimezone(UTC)
    probe = wall.replace(second=0, microsecond=0)
    for _ in range(2 * 24 * 60):  # the longest gap on record is a day (Samoa, 2011)
        probe += _MINUTE
        aware = probe.replace(tzinfo=zone)
        if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == probe:
            return aware.astimezone(UTC)
    raise ValueError(f"{wall.isoformat()} in {zone.key}: no valid time within two days")
