"""The NATS connection (:class:`Bus`, :func:`connect`): connect with backoff, drain on exit.

:class:`Bus` is the one object services hold: the nats-py client and JetStream context
plus the installation's names. Its stream, publish and pull methods are thin front doors
to :mod:`~taskflow_common.bus.streams`, :mod:`~taskflow_common.bus.publish` and
:mod:`~taskflow_common.bus.pull`, which own that logic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

# ``retry`` as a module, not ``from ... import Backoff``: retry.OUTAGE is built from this
# package's TRANSIENT_ERRORS, so when retry is imported first it is only half-initialised
# here; Backoff is looked up when a connect runs.
from taskflow_common import retry
from taskflow_common.bus import publish as publishing
from taskflow_common.bus import streams
from taskflow_common.bus.pull import Puller
from taskflow_common.bus.streams import ConsumerSettings
from taskflow_common.bus.transient import CONNECT_ERRORS, TRANSIENT_ERRORS
from taskflow_common.config import CommonSettings
from taskflow_common.errors import IncompatibleServerError, UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.subjects import Names, Priority

log = get_logger("taskflow_common.bus")  # one logger for the whole bus, as before the split

MIN_SERVER_VERSION = (2, 10)
"""Oldest NATS server TaskFlow runs on (per-subject consumer filters, consumer updates)."""


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

        Backoff: :class:`taskflow_common.retry.Backoff` (0.1 s doubling to 2 s). Raises
        :class:`IncompatibleServerError` for a server older than 2.10 and
        :class:`UnavailableError` when ``stop`` is set before a connection was made.
        """
        backoff = retry.Backoff()
        while True:
            try:
                await self._connect_once(name)
            except IncompatibleServerError:
                raise
            except CONNECT_ERRORS as exc:
                log.warning("nats_unavailable", url=self.settings.nats_url, error=str(exc))
                self.nc = NATS()
                delay = backoff.failed()
                if stop is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        raise UnavailableError("stopped before NATS was reachable") from exc
                else:
                    await asyncio.sleep(delay)
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

    # -- streams and consumers (taskflow_common.bus.streams) ----------------------------

    async def ensure_streams(self) -> bool:
        """Create or update both streams; True when the task stream was created now.

        See :func:`taskflow_common.bus.streams.ensure_streams` (raises UnavailableError).
        """
        return await streams.ensure_streams(self.js, self.names, self.settings)

    async def stream_created_at(self) -> str | None:
        """The task stream's creation time (ISO string), None if missing; raises
        UnavailableError (:func:`taskflow_common.bus.streams.stream_created_at`)."""
        return await streams.stream_created_at(self.js, self.names)

    async def stream_state(self) -> streams.StreamState | None:
        """The task stream's identity and sequence range, None if missing; raises
        UnavailableError (:func:`taskflow_common.bus.streams.stream_state`)."""
        return await streams.stream_state(self.js, self.names)

    async def consumer_positions(self) -> dict[Priority, streams.ConsumerPosition]:
        """Each priority consumer's delivered sequence and pending count; raises
        UnavailableError (:func:`taskflow_common.bus.streams.consumer_positions`)."""
        return await streams.consumer_positions(self.js, self.names)

    async def deleted_seqs(self) -> set[int]:
        """Sequences inside the task stream's range it no longer holds; raises
        UnavailableError (:func:`taskflow_common.bus.streams.deleted_seqs`)."""
        return await streams.deleted_seqs(self.js, self.names)

    async def message_ids(self, seqs: Sequence[int]) -> dict[int, str | None]:
        """``Nats-Msg-Id`` of the task stream's message at each sequence (None: not held);
        raises UnavailableError (:func:`taskflow_common.bus.streams.message_ids`)."""
        return await streams.message_ids(self.js, self.names, seqs)

    async def ensure_task_consumers(self, wanted: ConsumerSettings) -> None:
        """Create or update the three priority consumers to ``wanted``; raises
        ConsumerConfigMismatch or UnavailableError (see
        :func:`taskflow_common.bus.streams.ensure_task_consumers`)."""
        await streams.ensure_task_consumers(self.js, self.names, wanted)

    async def ensure_dlq_consumer(self, ack_wait_s: float = 30.0) -> None:
        """Create or update the dlq-monitor's durable consumer (``ack_wait_s`` seconds)."""
        await streams.ensure_dlq_consumer(self.js, self.names, ack_wait_s)

    async def oldest_waiting(self, priority: Priority) -> float | None:
        """Seconds the oldest undelivered message of ``priority`` has waited (None: none);
        raises UnavailableError (:func:`taskflow_common.bus.streams.oldest_waiting`)."""
        return await streams.oldest_waiting(self.nc, self.js, self.names, priority)

    # -- publishing (taskflow_common.bus.publish) ---------------------------------------

    async def publish_batch(
        self,
        items: Sequence[tuple[str, bytes, dict[str, str]]],
        timeout_s: float = 5.0,
    ) -> list[api.PubAck | BaseException]:
        """Publish ``(subject, data, headers)`` items; a PubAck or the exception for each,
        in order (see :func:`taskflow_common.bus.publish.publish_batch`)."""
        return await publishing.publish_batch(self.js, items, timeout_s)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
        """Publish one message and wait for its PubAck; raise UnavailableError on failure."""
        return await publishing.publish(self.js, subject, data, headers)

    async def ring(self, priorities: Sequence[Priority]) -> None:
        """Ring the workers' doorbell: messages are waiting on ``priorities``."""
        await publishing.ring(self.nc, self.names, priorities)

    # -- pulling (taskflow_common.bus.pull) ----------------------------------------------

    async def puller(self, stream: str, consumer: str) -> Puller:
        """Return an open :class:`~taskflow_common.bus.pull.Puller` on ``stream``/``consumer``."""
        p = Puller(self.nc, stream, consumer)
        await p.open()
        return p


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
