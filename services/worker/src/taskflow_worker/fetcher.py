"""Weighted priority fetching across the three per-priority durable consumers.

Each fetch round asks the consumers in an order chosen by smooth weighted round-robin
(the algorithm of nginx's upstream balancer, ngx_http_upstream_round_robin.c, Maxim
Dounin, 2011): with weights high=6, normal=3, low=1, ``high`` goes first in 6 of every
10 rounds, ``normal`` in 3 and ``low`` in 1, evenly interleaved. The first consumer with
messages fills the free slots, so under a steady high-priority load normal and low work
still starts every few rounds instead of starving, and when only one level has work it
gets every slot.
"""

from __future__ import annotations

from collections.abc import Mapping

from nats.aio.msg import Msg

from taskflow_common.bus import Puller
from taskflow_common.subjects import PRIORITIES, Priority


class WeightedOrder:
    """Smooth weighted round-robin over the priorities.

    ``next_order()`` returns all priorities: the round's pick first, then the others
    by descending weight.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = {p: int(weights[p]) for p in PRIORITIES}
        self._total = sum(self.weights.values())
        self._current = dict.fromkeys(PRIORITIES, 0)

    def next_order(self) -> list[Priority]:
        """Advance one round; return the order to ask the consumers in."""
        for p in PRIORITIES:
            self._current[p] += self.weights[p]
        pick = max(PRIORITIES, key=lambda p: self._current[p])
        self._current[pick] -= self._total
        rest = sorted((p for p in PRIORITIES if p != pick), key=lambda p: -self.weights[p])
        return [pick, *rest]


class Fetcher:
    """Pull at most ``free`` messages across the priority consumers, weighted."""

    def __init__(self, pullers: Mapping[Priority, Puller], weights: Mapping[str, int]) -> None:
        self.pullers = dict(pullers)
        self.order = WeightedOrder(weights)

    async def fetch(self, free: int) -> list[tuple[Priority, Msg]]:
        """Return up to ``free`` messages available now, tagged with their priority.

        Raises :class:`~taskflow_common.bus.ConsumerGone` or
        :class:`~taskflow_common.errors.UnavailableError` from the pulls.
        """
        out: list[tuple[Priority, Msg]] = []
        for priority in self.order.next_order():
            if free <= 0:
                break
            msgs = await self.pullers[priority].pull(free)
            out.extend((priority, m) for m in msgs)
            free -= len(msgs)
        return out
