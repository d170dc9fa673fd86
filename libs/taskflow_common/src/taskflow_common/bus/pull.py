"""Exact-size, non-lingering pulls from one durable consumer (:class:`Puller`).

Pulls use ``no_wait`` requests with an exact batch size, so a worker is never handed more
messages than it asked for and no pull request lingers on the server to deliver into a
local buffer later.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from taskflow_common.bus.transient import TRANSIENT_ERRORS
from taskflow_common.errors import ConsumerGone, UnavailableError

# Status codes the server sends on a pull inbox (nats-server ``jsStatus*``).
_STATUS_NO_MESSAGES = "404"
_STATUS_TIMEOUT = "408"
_STATUS_CONFLICT = "409"
_STATUS_NO_RESPONDERS = "503"
_STATUS_HEARTBEAT = "100"


class Puller:
    """Exact-size, non-lingering pulls from one durable consumer.

    ``pull(n)`` sends ``{"batch": n, "no_wait": true}`` and returns at most ``n``
    messages that are available right now (possibly none). Messages are nats-py
    :class:`~nats.aio.msg.Msg` objects: ``ack``/``nak``/``in_progress``/``term`` work.
    Create one with :meth:`taskflow_common.bus.Bus.puller`.
    """

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self._nc = nc
        self.stream = stream
        self.consumer = consumer
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Subscribe to this puller's private inbox."""
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def close(self) -> None:
        """Unsubscribe the inbox."""
        if self._sub is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS, nats.errors.BadSubscriptionError):
                await self._sub.unsubscribe()

    async def pull(self, n: int, timeout_s: float = 2.0) -> list[Msg]:
        """Fetch up to ``n`` (>= 1) messages available now.

        Raises :class:`ConsumerGone` when the server says the consumer or stream does not
        exist, :class:`UnavailableError` when NATS does not answer within ``timeout_s``.
        """
        assert self._sub is not None
        assert n >= 1
        async with self._lock:
            msgs: list[Msg] = []
            # Anything that arrived after an earlier pull gave up waiting is ours.
            while len(msgs) < n:
                try:
                    early = self._sub._pending_queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if not _status(early):
                    msgs.append(early)
            if len(msgs) == n:
                return msgs
            request = orjson.dumps({"batch": n - len(msgs), "no_wait": True})
            try:
                await self._nc.publish(self._subject, request, reply=self._inbox)
            except TRANSIENT_ERRORS as exc:
                if msgs:
                    return msgs
                raise UnavailableError(f"pull from {self.consumer} failed: {exc!r}") from exc
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while len(msgs) < n:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if msgs:
                        break
                    raise UnavailableError(f"pull from {self.consumer}: no answer in {timeout_s}s")
                try:
                    msg = await self._sub.next_msg(timeout=remaining)
                except nats.errors.TimeoutError:
                    continue
                except nats.errors.ConnectionClosedError as exc:
                    raise UnavailableError("connection closed") from exc
                status = _status(msg)
                if not status:
                    msgs.append(msg)
                elif status in (_STATUS_NO_MESSAGES, _STATUS_TIMEOUT):
                    break
                elif status == _STATUS_HEARTBEAT:
                    continue
                elif status in (_STATUS_NO_RESPONDERS, _STATUS_CONFLICT) or status.startswith("4"):
                    if msgs:
                        break
                    desc = (msg.headers or {}).get("Description", "")
                    raise ConsumerGone(f"{self.stream}/{self.consumer}: {status} {desc}".strip())
            return msgs


def _status(msg: Msg) -> str:
    headers = msg.headers
    if not headers or msg.data:
        return ""
    return str(headers.get("Status", ""))
