"""Priority fetching across the three per-priority durable consumers: strict, with aging.

Each fetch asks ``high`` first, then ``normal``, then ``low``, and the first consumer
with messages fills the free slots, so a high-priority task never waits behind lower
ones. To keep lower priorities from starving under a sustained high-priority load, a
``normal`` or ``low`` message that has waited longer than its bound in
``WORKER_PRIORITY_MAX_WAIT`` (default ``normal=45s,low=50s``) is *promoted*: it is
fetched first (one per fetch, most overdue priority first). So under overload high work
waits least, normal work waits up to its bound, low work up to its own, and nothing
waits much longer than its bound: the classic remedy for starvation in priority
scheduling, *aging* (Silberschatz, Galvin and Gagne, *Operating System Concepts*, ch. 5,
"Priority Scheduling"), with an explicit age bound instead of a gradual priority boost.

The age of a priority's oldest waiting message is asked from the server
(:meth:`~taskflow_common.bus.Bus.oldest_waiting`) only when it matters, i.e. after a
fetch served a higher priority, and at most every ``probe_s`` seconds per priority;
an idle or lightly loaded worker never probes. Ages are read on the NATS server's clock
alone (its current time minus the publish time), never against the worker's wall clock.

A priority whose last pull came back short (it had fewer messages than asked) is *known
empty* and skipped for ``empty_s`` seconds (50 ms by default), unless the dispatcher's
doorbell says it got work (:meth:`Fetcher.wake`): under a normal-only load a fetch then
costs one pull instead of a pull and a "no messages" answer per empty priority above
it. New work always rings the doorbell, so strict priority holds for it; only a
message that comes back without a ring (a redelivery after a nak delay or an expired
ack wait, or a ring lost while reconnecting) can wait up to ``empty_s`` behind lower
priorities.

A proportional scheme (weighted round-robin over the consumers) was used before; it let
a lone normal task overtake a backlog of high ones within a round or two, so under
overload normal work waited *less* than high work (issue 4, scenario 14).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from nats.aio.msg import Msg

from taskflow_common.bus import Puller
from taskflow_common.subjects import PRIORITIES, Priority

AGED: tuple[Priority, ...] = ("normal", "low")
"""Priorities that can be promoted (high is always asked first anyway)."""

Probe = Callable[[Priority], Awaitable[float | None]]
"""Seconds the oldest waiting message of a priority has waited (None: none waits)."""


class Aging:
    """Which lower priorities are overdue, from cached, rate-limited age probes.

    ``max_wait`` maps ``normal``/``low`` to seconds; ``clock`` is a monotonic clock.
    """

    def __init__(
        self,
        max_wait: Mapping[str, float],
        probe: Probe,
        probe_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = {p: float(max_wait[p]) for p in AGED}
        self.probe = probe
        self.probe_s = probe_s
        self.clock = clock
        # priority -> (clock time of the probe, age then); age None: nothing waited.
        self._seen: dict[Priority, tuple[float, float | None]] = {}
        self._behind: set[Priority] = set()

    def served(self, priorities: set[Priority]) -> None:
        """Note which priorities the last fetch got messages from.

        A lower priority may be waiting behind them: it becomes worth probing.
        """
        if "high" in priorities:
            self._behind |= {"normal", "low"}
        elif "normal" in priorities:
            self._behind.add("low")

    def promoted_one(self, priority: Priority) -> None:
        """Forget ``priority``'s age: its oldest message was just fetched."""
        self._seen.pop(priority, None)

    async def overdue(self) -> list[Priority]:
        """Return the overdue priorities, most overdue first (probing when needed)."""
        now = self.clock()
        late: list[tuple[float, Priority]] = []
        for p in AGED:
            seen = self._seen.get(p)
            if p in self._behind and (seen is None or now - seen[0] >= self.probe_s):
                seen = (now, await self.probe(p))
                self._seen[p] = seen
                self._behind.discard(p)
            if seen is None or seen[1] is None:
                continue
            age = seen[1] + (now - seen[0])
            if age >= self.max_wait[p]:
                late.append((age - self.max_wait[p], p))
        return [p for _, p in sorted(late, reverse=True)]


EMPTY_S = 0.05
"""How long a priority whose pull came back short is skipped, unless the doorbell rings."""


class Fetcher:
    """Pull at most ``free`` messages across the priority consumers (see module doc)."""

    def __init__(
        self,
        pullers: Mapping[Priority, Puller],
        max_wait: Mapping[str, float],
        probe: Probe,
        probe_s: float | None = None,
        empty_s: float = EMPTY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pullers = dict(pullers)
        if probe_s is None:
            probe_s = min(2.0, max(0.1, min(max_wait[p] for p in AGED) / 20))
        self.aging = Aging(max_wait, probe, probe_s, clock)
        self.empty_s = empty_s
        self.clock = clock
        # priority -> clock time until which it counts as empty.
        self._empty_until: dict[Priority, float] = {}

    def wake(self, priorities: Iterable[str]) -> None:
        """Forget that ``priorities`` were empty: the doorbell says they got work.

        Unknown names are ignored; an empty ring (an older dispatcher) wakes all.
        """
        names = [p for p in priorities if p]
        if not names:
            self._empty_until.clear()
            return
        for p in names:
            self._empty_until.pop(p, None)  # type: ignore[call-overload]

    def known_empty(self, priority: Priority) -> bool:
        """True while ``priority``'s last short pull is younger than ``empty_s``."""
        until = self._empty_until.get(priority)
        return until is not None and self.clock() < until

    async def fetch(self, free: int) -> list[tuple[Priority, Msg]]:
        """Return up to ``free`` messages available now, tagged with their priority.

        Raises :class:`~taskflow_common.bus.ConsumerGone` or
        :class:`~taskflow_common.errors.UnavailableError` from the pulls.
        """
        out: list[tuple[Priority, Msg]] = []
        for priority in await self.aging.overdue():
            if free <= 0:
                break
            msgs = await self.pullers[priority].pull(1)
            out.extend((priority, m) for m in msgs)
            free -= len(msgs)
            self.aging.promoted_one(priority)
        for priority in PRIORITIES:
            if free <= 0:
                break
            if self.known_empty(priority):
                continue
            msgs = await self.pullers[priority].pull(free)
            if len(msgs) < free:
                self._empty_until[priority] = self.clock() + self.empty_s
            else:
                self._empty_until.pop(priority, None)
            out.extend((priority, m) for m in msgs)
            free -= len(msgs)
        self.aging.served({p for p, _ in out})
        return out
