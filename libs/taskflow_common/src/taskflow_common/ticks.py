"""Which ticks of a due schedule fire: the missed-tick and overlap policies, as pure math.

The dispatcher's schedule loop locks a due schedule, asks :func:`plan` what to do with the
ticks since its stored next fire time, creates one task per tick in :attr:`Plan.fire` and
stores :attr:`Plan.next_fire_at`, all in one transaction. Nothing here does I/O, so the
policies are tested with any clock.

Ticks are *on time* when they are at most ``grace_s`` old at ``now``; older ones are
*missed* (every dispatcher was down, or the schedule was paused):

- missed ``skip`` (the default): missed ticks are skipped (counted), on-time ones fire;
  after an outage the schedule resumes at its next tick.
- missed ``catch_up``: the newest ``catch_up_max`` missed ticks fire as well, oldest first,
  and older ones are skipped. They are *late* (created more than ``grace_s`` after due).

Overlap, for a tick whose previous run (the schedule's last task) has not finished:

- ``allow`` (the default): it fires anyway.
- ``skip``: it is skipped (counted). Of several ticks in one pass only the first fires,
  since its own task is then the running previous run.
- ``queue``: it waits. The schedule is *held* (its next fire time is not advanced and the
  loop does not look at it) until the previous run ends; then the waiting tick fires,
  whatever its age, and the ticks that passed meanwhile follow the missed-tick policy. At
  most one tick waits, so a slow task never piles up a backlog.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from taskflow_common.cadence import Cadence

MissedPolicy = Literal["skip", "catch_up"]
OverlapPolicy = Literal["allow", "skip", "queue"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("skip", "catch_up")
OVERLAP_POLICIES: tuple[OverlapPolicy, ...] = ("allow", "skip", "queue")
MAX_CATCH_UP = 1000
"""Largest ``catch_up_max`` (also the most ticks one pass fires for one schedule)."""
_TINY = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Policy:
    """A schedule's policies; ``catch_up_max`` (1..:data:`MAX_CATCH_UP`) bounds catch-up."""

    missed: MissedPolicy = "skip"
    catch_up_max: int = 10
    overlap: OverlapPolicy = "allow"


@dataclass(frozen=True, slots=True)
class PreviousRun:
    """The schedule's last task: still ``running`` (not terminal), and when it finished."""

    running: bool
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass does with one due schedule.

    ``fire``: ticks to create tasks for, oldest first (UTC). ``late``: how many of them
    are older than the grace. ``skipped_missed`` / ``skipped_overlap``: ticks dropped by
    each policy (a cron gap longer than :data:`~taskflow_common.cadence.SCAN_LIMIT` ticks
    counts that many). ``next_fire_at``: the tick to store; in the past when ``held`` or
    when the pass stopped at ``limit`` (the next pass goes on from there). ``held``: a
    ``queue`` tick waits for the previous run.
    """

    fire: tuple[dt.datetime, ...]
    next_fire_at: dt.datetime
    late: int = 0
    skipped_missed: int = 0
    skipped_overlap: int = 0
    held: bool = False


def plan(
    cadence: Cadence,
    policy: Policy,
    due: dt.datetime,
    now: dt.datetime,
    previous: PreviousRun | None,
    *,
    grace_s: float,
    limit: int = MAX_CATCH_UP,
) -> Plan:
    """Decide which ticks from ``due`` (the stored next fire time, a tick) up to ``now`` fire.

    ``previous`` is the schedule's last task (None: none, or pruned). ``grace_s``
    (seconds, >= 0) separates on-time ticks from missed ones; ``limit`` caps the ticks
    fired by one pass. A ``due`` after ``now`` fires nothing. See the module docstring
    for the policies.
    """
    if due > now:
        return Plan((), due)
    running = previous is not None and previous.running
    if policy.overlap == "queue" and running:
        return Plan((), due, held=True)
    cutoff = now - dt.timedelta(seconds=grace_s)
    # A tick that came due while the previous run was going waited for it (queue): it
    # fires now whatever its age.
    waited = (
        policy.overlap == "queue"
        and previous is not None
        and previous.finished_at is not None
        and previous.finished_at > due
    )
    candidates: list[dt.datetime] = []
    start = due
    if waited:
        candidates.append(due)
        start = cadence.after(due, due)
    skipped_missed = 0
    if start < cutoff:
        missed_total = cadence.count(start, cutoff)
        if policy.missed == "catch_up":
            caught = cadence.latest(start, cutoff, policy.catch_up_max)
            candidates += caught
            skipped_missed = max(0, missed_total - len(caught))
        else:
            skipped_missed = missed_total
    on_time_from = start if start >= cutoff else cadence.after(cutoff - _TINY, start)
    candidates += cadence.ticks(on_time_from, now, limit=limit + 1)

    fire = candidates
    skipped_overlap = 0
    rest: list[dt.datetime] = []
    if policy.overlap == "skip" and candidates:
        if running:
            fire, skipped_overlap = [], len(candidates)
        else:
            fire, skipped_overlap = candidates[:1], len(candidates) - 1
    elif policy.overlap == "queue" and len(candidates) > 1:
        fire, rest = candidates[:1], candidates[1:]
    if len(fire) > limit:
        fire, rest = fire[:limit], fire[limit:]
    late = sum(1 for t in fire if t < cutoff)
    if rest:
        # The first tick not fired waits for the next pass (queue: for this run to end).
        return Plan(
            tuple(fire),
            rest[0],
            late=late,
            skipped_missed=skipped_missed,
            held=policy.overlap == "queue",
        )
    origin = candidates[-1] if candidates else due
    return Plan(
        tuple(fire),
        cadence.after(now, origin),
        late=late,
        skipped_missed=skipped_missed,
        skipped_overlap=skipped_overlap,
    )
