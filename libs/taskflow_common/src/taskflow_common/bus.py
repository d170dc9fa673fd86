"""NATS JetStream access: connect, reconcile streams and consumers, publish, pull.

Layout (names from :mod:`taskflow_common.subjects`):

- task stream ``NATS_STREAM_NAME`` on ``<prefix>.high|normal|low``, work-queue retention
  (an acked message is gone), file storage, 120 s duplicate window for ``Nats-Msg-Id``;
- dead-letter stream ``<NATS_STREAM_NAME>_DLQ`` on ``<prefix>.dlq``, limits retention for
  ``DLQ_MAX_AGE`` (30 days by default), so no task consumer can ever receive a dead letter;
- one durable pull consumer per priority (explicit ack, ``ack_wait``/``max_deliver``/
  ``max_ack_pending`` from config, reconciled at start) and one for the dlq-monitor.

Pulls use ``no_wait`` requests with an exact batch size (:class:`Puller`), so a worker is
never handed more messages than it asked for and no pull request lingers on the server
to deliver into a local buffer later. Idle workers wait on a core-NATS doorbell
(``<prefix>.wake``) that the dispatcher rings after each publish batch, with a polling
fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext

from taskflow_common.config import CommonSettings
from taskflow_common.errors import (
    ConsumerConfigMismatch,
    IncompatibleServerError,
    TaskFlowError,
    UnavailableError,
)
from taskflow_common.logs import get_logger
from taskflow_common.subjects import HEADER_MSG_ID, PRIORITIES, Names, Priority

log = get_logger(__name__)

MIN_SERVER_VERSION = (2, 10)
DUPLICATE_WINDOW_S = 120.0
"""Server-side dedupe window for ``Nats-Msg-Id`` (the JetStream default, 2 min)."""

# Errors that mean "NATS or the stream is not answering right now".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
    OSError,
)


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, nats.errors.NoServersError)
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    nats.js.errors.TooManyStalledMsgsError,
)


class ConsumerGone(TaskFlowError):
    """A pull found its consumer (or stream) missing; the caller should reconcile."""


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """What we reconcile on every task consumer. Durations in seconds."""

    ack_wait_s: float
    max_deliver: int
    max_ack_pending: int

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> ConsumerSettings:
        """Take ``WORKER_ACK_WAIT``, ``WORKER_MAX_DELIVER``, ``WORKER_MAX_ACK_PENDING``."""
        return cls(
            settings.worker_ack_wait, settings.worker_max_deliver, settings.worker_max_ack_pending
        )


class Bus:
    """One NATS connection plus the JetStream names of this installation.

    Create with :func:`connect`. ``nc``/``js`` are nats-py objects; everything
    TaskFlow-specific about the layout goes through this class.
    """

    def __init__(self, settings: CommonSettings, names: Names) -> None:
        self.settings = settings
        self.names = names
        self.nc: NATS = NATS()
        self.js: JetStreamContext = self.nc.jetstream()
        self.ready = asyncio.Event()
        self.server_version = ""
        self.error: BaseException | None = None
        """Why the background connect gave up (e.g. a NATS server that is too old)."""
        self._last_error: tuple[str, float] = ("", 0.0)
        self._closing = False

    @property
    def connected(self) -> bool:
        """True while the client has a live connection to a server."""
        return self.nc.is_connected

    async def _connect_once(self, name: str) -> None:
        await self.nc.connect(
            servers=[self.settings.nats_url],
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py annotates int; floats work
            # Notice a dead or frozen server in ~3 s instead of nats-py's default 4 min.
            ping_interval=1,
            max_outstanding_pings=3,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )
        self.js = self.nc.jetstream(timeout=5)
        version = self.nc.connected_server_version
        self.server_version = str(version)
        if (version.major, version.minor) < MIN_SERVER_VERSION:
            await self.nc.close()
            raise IncompatibleServerError(
                f"NATS server {version} at {self.settings.nats_url} is too old: TaskFlow needs "
                f">= {'.'.join(map(str, MIN_SERVER_VERSION))} (per-subject consumer filters, "
                "consumer updates)"
            )

    async def start(self, name: str, stop: asyncio.Event | None = None) -> None:
        """Connect, retrying with capped backoff until connected or ``stop`` is set.

        Raises :class:`IncompatibleServerError` for a server older than 2.10 and
        :class:`UnavailableError` when ``stop`` is set before a connection was made.
        """
        delay = 0.1
        while True:
            try:
                await self._connect_once(name)
            except IncompatibleServerError:
                raise
            except _CONNECT_ERRORS as exc:
                log.warning("nats_unavailable", url=self.settings.nats_url, error=str(exc))
                self.nc = NATS()
                if stop is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        raise UnavailableError("stopped before NATS was reachable") from exc
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.ready.set()
            log.info("nats_connected", url=self.settings.nats_url, version=self.server_version)
            return

    async def close(self) -> None:
        """Drain the connection (flush pending acks/publishes), then close it."""
        self._closing = True
        if self.nc.is_connected:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            except TRANSIENT_ERRORS:  # TimeoutError is one of them
                await self.nc.close()
        elif not self.nc.is_closed:
            await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        # While a server is down nats-py reports every refused reconnect (4 a second);
        # log the first of a kind and then at most one every 30 s.
        kind = exc.__class__.__name__
        now = asyncio.get_running_loop().time()
        last_kind, last_at = self._last_error
        if kind != last_kind or now - last_at >= 30.0:
            self._last_error = (kind, now)
            log.warning("nats_error", error=f"{kind}: {exc}")

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("nats_disconnected", url=self.settings.nats_url)

    async def _on_reconnect(self) -> None:
        log.info("nats_reconnected", url=self.settings.nats_url)

    # -- streams and consumers --------------------------------------------------------

    async def ensure_streams(self) -> bool:
        """Create the task and dead-letter streams, or update them to match config.

        Returns True when the task stream did not exist (it was created now), which
        means any message published before is gone. Raises :class:`UnavailableError`
        when JetStream does not answer.
        """
        created = await self._ensure_stream(
            api.StreamConfig(
                name=self.names.stream,
                subjects=self.names.task_subjects,
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
                discard=api.DiscardPolicy.NEW,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=self.names.dlq_stream,
                subjects=[self.names.dlq_subject],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.settings.dlq_max_age,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
        return created

    async def stream_created_at(self) -> str | None:
        """Return the task stream's creation time (ISO string), or None if it is missing."""
        try:
            info = await self.js.stream_info(self.names.stream)
        except nats.js.errors.NotFoundError:
            return None
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
        return info.created.isoformat() if info.created else ""

    async def _ensure_stream(self, config: api.StreamConfig) -> bool:
        try:
            try:
                info = await self.js.stream_info(config.name)  # type: ignore[arg-type]
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(config)
                log.info("stream_created", stream=config.name, subjects=config.subjects)
                return True
            current = info.config
            if (
                sorted(current.subjects or []) != sorted(config.subjects or [])
                or abs((current.max_age or 0.0) - (config.max_age or 0.0)) > 1e-3
                or abs((current.duplicate_window or 0.0) - (config.duplicate_window or 0.0)) > 1e-3
            ):
                await self.js.update_stream(config)
                log.info("stream_updated", stream=config.name)
            return False
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc

    async def ensure_task_consumers(self, wanted: ConsumerSettings) -> None:
        """Create or update the three priority consumers to ``wanted``.

        An existing consumer with other ``ack_wait``/``max_deliver``/``max_ack_pending``
        is updated in place; if the server refuses, :class:`ConsumerConfigMismatch` is
        raised naming the consumer and both values; we never run on stale settings.
        """
        for priority in PRIORITIES:
            await self._ensure_consumer(
                self.names.stream,
                api.ConsumerConfig(
                    durable_name=self.names.consumer(priority),
                    filter_subject=self.names.task_subject(priority),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_wait=wanted.ack_wait_s,
                    max_deliver=wanted.max_deliver,
                    max_ack_pending=wanted.max_ack_pending,
                ),
            )

    async def ensure_dlq_consumer(self, ack_wait_s: float = 30.0) -> None:
        """Create or update the dlq-monitor's durable consumer on the dead-letter stream."""
        await self._ensure_consumer(
            self.names.dlq_stream,
            api.ConsumerConfig(
                durable_name=self.names.dlq_consumer,
                filter_subject=self.names.dlq_subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1000,
            ),
        )

    async def _ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> None:
        name = config.durable_name
        assert name is not None
        try:
            try:
                info = await self.js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                await self.js.add_consumer(stream, config)
                log.info("consumer_created", stream=stream, consumer=name)
                return
            diff = _consumer_diff(info.config, config)
            if not diff:
                return
            try:
                await self.js.add_consumer(stream, config)
            except nats.js.errors.APIError as exc:
                raise ConsumerConfigMismatch(
                    f"consumer {stream}/{name} has {diff} but config wants otherwise and the "
                    f"server refused the update ({exc.description}); delete the consumer or "
                    "fix the configuration"
                ) from exc
            after = await self.js.consumer_info(stream, name)
            left = _consumer_diff(after.config, config)
            if left:
                raise ConsumerConfigMismatch(
                    f"consumer {stream}/{name} still has {left} after an update"
                )
            log.info("consumer_updated", stream=stream, consumer=name, changed=diff)
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc

    # -- publishing ---------------------------------------------------------------------

    async def publish_batch(
        self,
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
                    await self.js.publish_async(
                        subject, data, headers=dict(headers), wait_stall=timeout_s
                    )
                )
            except _PUBLISH_ERRORS as exc:
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

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
        """Publish one message and wait for its PubAck; raise UnavailableError on failure."""
        try:
            return await self.js.publish(subject, data, headers=dict(headers), timeout=5)
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"publish to {subject} failed: {exc!r}") from exc

    async def ring(self, priorities: Sequence[Priority]) -> None:
        """Ring the workers' doorbell: messages are waiting on ``priorities``."""
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.nc.publish(self.names.wake_subject, ",".join(priorities).encode())

    async def puller(self, stream: str, consumer: str) -> Puller:
        """Return a :class:`Puller` bound to ``stream``/``consumer``."""
        p = Puller(self.nc, stream, consumer)
        await p.open()
        return p

    async def oldest_waiting(self, priority: Priority) -> float | None:
        """Seconds the oldest not-yet-delivered message of ``priority`` has waited.

        None when none waits. Read-only: the task consumer's delivered sequence, then
        the first message on the priority's subject after it (``next_by_subj``). One
        clock only, the server's: the age is the consumer info's server time (``ts``,
        NATS >= 2.10) minus the message's publish time, so a worker whose wall clock is
        off does not promote too early or too late. Raises :class:`UnavailableError`
        when JetStream does not answer.
        """
        stream, subject = self.names.stream, self.names.task_subject(priority)
        consumer = self.names.consumer(priority)
        try:
            # The raw API answer: nats-py's ConsumerInfo drops the server time ``ts``.
            resp = await self.nc.request(
                f"{api.DEFAULT_PREFIX}.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=5
            )
            info = orjson.loads(resp.data)
            if "error" in info or not info.get("num_pending"):
                return None  # no such consumer (yet), or nothing waits
            msg = await self.js.get_msg(
                stream, seq=info["delivered"]["stream_seq"] + 1, subject=subject, next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
        if msg.time is None:
            return None
        server_now = _server_time(info.get("ts")) or dt.datetime.now(dt.UTC)
        return max(0.0, (server_now - msg.time).total_seconds())


def _server_time(value: object) -> dt.datetime | None:
    """Parse a JetStream API timestamp (RFC 3339, nanoseconds); None when absent or bad."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


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


def _consumer_diff(have: api.ConsumerConfig, want: api.ConsumerConfig) -> dict[str, object]:
    diff: dict[str, object] = {}
    for field in ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject"):
        a, b = getattr(have, field), getattr(want, field)
        if isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > 1e-6:
                diff[field] = a
        elif a != b:
            diff[field] = a
    return diff


@asynccontextmanager
async def connect(
    settings: CommonSettings,
    name: str,
    *,
    stop: asyncio.Event | None = None,
    wait: bool = True,
) -> AsyncIterator[Bus]:
    """Connect to NATS as client ``name`` and drain on exit.

    With ``wait`` the call returns once connected (retrying until ``stop``); without it,
    the connection is made in the background and ``bus.ready`` is set when it is (the
    ingest API starts even while NATS is down). Raises :class:`IncompatibleServerError`
    for NATS older than 2.10.
    """
    bus = Bus(settings, Names.from_settings(settings))
    task: asyncio.Task[None] | None = None
    if wait:
        await bus.start(name, stop)
    else:
        task = asyncio.create_task(_start_in_background(bus, name, stop))
    try:
        yield bus
    finally:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, UnavailableError):
                await task
        await bus.close()


async def _start_in_background(bus: Bus, name: str, stop: asyncio.Event | None) -> None:
    """Run :meth:`Bus.start`; keep a fatal error on ``bus.error`` instead of losing it."""
    try:
        await bus.start(name, stop)
    except IncompatibleServerError as exc:
        bus.error = exc
        log.error("nats_incompatible", error=str(exc))
    except UnavailableError as exc:
        bus.error = exc


def on_message(callback: Callable[[Msg], None]) -> Callable[[Msg], asyncio.Future[None]]:
    """Adapt a plain function into the async callback nats-py subscriptions expect."""

    async def handler(msg: Msg) -> None:
        callback(msg)

    return handler  # type: ignore[return-value]
