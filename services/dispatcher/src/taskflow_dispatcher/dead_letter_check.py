"""The dead-letter check: publish again a dead letter the bus lost before it was recorded.

A task's dead letter stays pending in Postgres until the dlq-monitor has recorded it
(migration 0007); the outbox sweeper publishes it once and remembers where: the
dead-letter stream's identity (its creation time) and the PubAck's stream sequence. A
NATS store wiped, the stream deleted, or the message aged out after ``DLQ_MAX_AGE``
while the monitor was down would otherwise lose it for good. Every
``DISPATCHER_DEAD_LETTER_CHECK_INTERVAL`` this duty reads the stream's identity and
first sequence (one ``STREAM.INFO``) and re-arms, in one statement, every published but
unrecorded dead letter that the stream no longer holds; the sweeper then publishes it
again under the same ``Nats-Msg-Id``, so the monitor records it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors

from taskflow_common.bus import TRANSIENT_ERRORS, Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.store import outbox
from taskflow_dispatcher.metrics import DispatcherMetrics

log = get_logger(__name__)

LOOP = "dead-letter-check"
"""The loop's name in ``loop_failed`` lines and ``taskflow_loop_errors_total``."""


@dataclass(frozen=True, slots=True)
class DlqStream:
    """Where the dead-letter stream stands: ``identity`` (its creation time, RFC 3339;
    ``""`` when the server gives none) and ``first_seq``, the first sequence it holds."""

    identity: str
    first_seq: int


async def dlq_stream(bus: Bus) -> DlqStream | None:
    """Read the dead-letter stream's identity and first sequence; None when it is missing.

    Raises :class:`UnavailableError` when JetStream does not answer.
    """
    try:
        info = await bus.js.stream_info(bus.names.dlq_stream)
    except nats.js.errors.NotFoundError:
        return None
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
    identity = info.created.isoformat() if info.created else ""
    return DlqStream(identity, int(info.state.first_seq or 0))


class DeadLetterCheck:
    """Re-arms lost dead letters every ``interval_s`` seconds; ``on_rearmed()`` wakes the
    sweeper (the re-arming statement also notifies ``taskflow_outbox``)."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        interval_s: float,
        *,
        metrics: DispatcherMetrics,
        errors: LoopErrors,
        on_rearmed: Callable[[], None],
    ) -> None:
        self.db = db
        self.bus = bus
        self.interval_s = interval_s
        self.metrics = metrics
        self.errors = errors
        self.on_rearmed = on_rearmed

    async def check(self) -> int:
        """One pass: re-arm the dead letters the stream no longer holds; return how many.

        Nothing is done while the stream is missing (the stream watch recreates it; the
        next pass then sees a new identity). Raises UnavailableError (or a driver error)
        when NATS or Postgres is away.
        """
        where = await dlq_stream(self.bus)
        if where is None:
            return 0
        async with self.db.acquire() as conn:
            n = await outbox.rearm_lost_dead_letters(conn, where.identity, where.first_seq)
        if n:
            log.warning(
                "dead_letters_rearmed",
                stream=self.bus.names.dlq_stream,
                count=n,
                first_seq=where.first_seq,
            )
            self.metrics.dead_letters_rearmed.inc(n)
            self.on_rearmed()
        return n

    async def run(self, stop: asyncio.Event) -> None:
        """Run :meth:`check` every ``interval_s`` until ``stop``; survives any error."""

        async def one_pass() -> float:
            if self.bus.connected:
                await self.check()
            return self.interval_s

        await run_loop(LOOP, one_pass, stop, errors=self.errors)
