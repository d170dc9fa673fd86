"""Publishing: batches with async PubAcks, single publishes, and the workers' doorbell.

Every JetStream publish carries a ``Nats-Msg-Id``: a publish that raised or timed out
during a disconnect may still have been stored, and re-publishing it with the same id
inside the stream's duplicate window stores it once (see ``STACK-FACTS.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext

from taskflow_common.bus.transient import PUBLISH_ERRORS, TRANSIENT_ERRORS
from taskflow_common.errors import UnavailableError
from taskflow_common.subjects import HEADER_MSG_ID, Names, Priority


async def publish_batch(
    js: JetStreamContext,
    items: Sequence[tuple[str, bytes, dict[str, str]]],
    timeout_s: float = 5.0,
) -> list[api.PubAck | BaseException]:
    """Publish ``(subject, data, headers)`` items with async acks; wait for each PubAck.

    Each item's headers must carry ``Nats-Msg-Id``: an item whose ack did not come
    within ``timeout_s`` is reported as an exception and may be re-published with the
    same id (the server dedupes it). Returns, in order, a PubAck or the exception.
    """
    futures: list[asyncio.Future[api.PubAck] | BaseException] = []
    for subject, data, headers in items:
        assert HEADER_MSG_ID in headers
        try:
            futures.append(
                await js.publish_async(subject, data, headers=dict(headers), wait_stall=timeout_s)
            )
        except PUBLISH_ERRORS as exc:
            futures.append(exc)
    pending = [f for f in futures if isinstance(f, asyncio.Future)]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    out: list[api.PubAck | BaseException] = []
    for f in futures:
        if not isinstance(f, asyncio.Future):
            out.append(f)
        elif not f.done():
            f.cancel()
            out.append(TimeoutError("no PubAck in time"))
        else:
            failure = f.exception()
            out.append(failure if failure is not None else f.result())
    return out


async def publish(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]
) -> api.PubAck:
    """Publish one message and wait (5 s at most) for its PubAck.

    Raises :class:`UnavailableError` when NATS does not answer.
    """
    try:
        return await js.publish(subject, data, headers=dict(headers), timeout=5)
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"publish to {subject} failed: {exc!r}") from exc


async def ring(nc: NATS, names: Names, priorities: Sequence[Priority]) -> None:
    """Ring the workers' doorbell (core NATS, best effort): messages wait on ``priorities``."""
    with contextlib.suppress(*TRANSIENT_ERRORS):
        await nc.publish(names.wake_subject, ",".join(priorities).encode())
