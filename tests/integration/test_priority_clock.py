"""Priority aging's age probe against a real NATS: the server's clock only (issue 11).

:meth:`~taskflow_common.bus.Bus.oldest_waiting` tells the fetcher how long the oldest
message of a priority has waited. The publish time comes from the NATS server; the age
must not depend on how far this process's wall clock is from the server's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from taskflow_common import bus as bus_mod
from taskflow_common.bus import ConsumerSettings
from taskflow_common.config import CommonSettings, load
from taskflow_common.subjects import HEADER_MSG_ID
from taskflow_devstack.servers import NatsServer

SKEW = dt.timedelta(hours=1)


class _AheadClock(dt.datetime):
    """``datetime`` whose ``now()`` runs an hour ahead: a worker with a wrong clock."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _AheadClock:
        real = dt.datetime.now(tz)
        return cls.fromtimestamp((real + SKEW).timestamp(), tz)


@pytest.fixture
async def bus(nats_server: NatsServer, stack_names: dict[str, str]) -> AsyncIterator[bus_mod.Bus]:
    env = {"NATS_URL": nats_server.url, **stack_names}
    async with bus_mod.connect(load(CommonSettings, env), "test-priority-clock") as b:
        await b.ensure_streams()
        await b.ensure_task_consumers(
            ConsumerSettings(ack_wait_s=30, max_deliver=5, max_ack_pending=20)
        )
        yield b


async def test_the_age_of_a_waiting_message_ignores_the_local_clock(
    bus: bus_mod.Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message published just now has waited about 0 s, with this clock an hour ahead.

    Before: its age was measured with the local wall clock against the server's
    publish time, so a skewed worker promoted (or never promoted) lower priorities.
    """
    assert await bus.oldest_waiting("normal") is None
    await bus.publish(bus.names.task_subject("normal"), b"{}", {HEADER_MSG_ID: "n0"})
    ahead = SimpleNamespace(datetime=_AheadClock, UTC=dt.UTC, timedelta=dt.timedelta)
    monkeypatch.setattr("taskflow_common.bus.streams.dt", ahead)
    age = await bus.oldest_waiting("normal")
    assert age is not None
    assert 0.0 <= age < 5.0, f"age {age:.1f}s of a message published just now"
