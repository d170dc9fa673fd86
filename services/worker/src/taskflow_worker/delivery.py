"""Settling a delivery: ack/nak/term that never raise, the nak delay, malformed messages.

Every path through the worker settles its message exactly once. A settle that fails
(NATS away) is logged as ``settle_failed`` and otherwise ignored: the message is then
redelivered after its ack wait, and the fenced claim refuses the copy.
"""

from __future__ import annotations

from collections.abc import Awaitable

from nats.aio.msg import Msg

from taskflow_common.bus import Bus
from taskflow_common.errors import UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.messages import MAX_RAW_BYTES, DeadLetter
from taskflow_common.subjects import HEADER_MSG_ID

log = get_logger(__name__)


async def settle(ack: Awaitable[object]) -> None:
    """Await an ack/nak/term; a failure here only means a later redelivery."""
    try:
        await ack
    except Exception as exc:  # every NATS error is an Exception too
        log.warning("settle_failed", error=repr(exc))


def redelivery_delay(msg: Msg) -> float:
    """Seconds to nak ``msg`` for: 1, 2, 4, ... by its delivery count, at most 30."""
    delivered = msg.metadata.num_delivered or 1
    return float(min(30, 2 ** min(delivered - 1, 5)))


class DeadLetters:
    """Dead-letters deliveries the worker cannot run on ``bus``'s dead-letter subject."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def malformed(self, msg: Msg, reason: str) -> None:
        """Publish a dead letter for an undecodable delivery, then ``term`` it.

        ``reason`` says what is wrong (e.g. ``unknown task id ...``). If the dead letter
        cannot be published the delivery is nak'd instead (after :func:`redelivery_delay`),
        so the message is never dropped unrecorded. Never raises for a NATS outage.
        """
        meta = msg.metadata
        letter = DeadLetter(
            reason=f"malformed message: {reason}", subject=msg.subject, raw=msg.data[:MAX_RAW_BYTES]
        )
        # The message's stored time (same on every redelivery) tells two incarnations of
        # the stream apart: their sequences start again at 1.
        stored_us = int(meta.timestamp.timestamp() * 1_000_000)
        msg_id = f"dlq:malformed:{meta.stream}:{meta.sequence.stream}:{stored_us}"
        try:
            await self.bus.publish(
                self.bus.names.dlq_subject, letter.encode(), {HEADER_MSG_ID: msg_id}
            )
        except UnavailableError as exc:
            log.warning("dead_letter_unavailable", error=str(exc))
            await settle(msg.nak(delay=redelivery_delay(msg)))
            return
        log.warning(
            "message_dead_lettered",
            reason=reason,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
        )
        await settle(msg.term())
