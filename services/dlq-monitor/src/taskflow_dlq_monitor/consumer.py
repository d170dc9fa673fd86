"""The dead-letter consumer: pull from ``<prefix>.dlq``, record once in Postgres, then ack.

Per message:

1. decode the body as a :class:`~taskflow_common.messages.DeadLetter`; a body that is
   not one is still recorded, with reason ``undecodable dead letter``, the decoding
   error and up to 4 KiB of the raw bytes;
2. record it under its ``Nats-Msg-Id`` (or, without one, a key made of the stream,
   sequence and a hash of the body) with ``ON CONFLICT DO NOTHING``, so a redelivery is
   recorded once;
3. log one WARN ``task_dead_lettered`` line when the row is new;
4. ack, only after the commit. A lost ack means a redelivery, which step 2 absorbs.

Faults never crash the loop: while Postgres is down the message in hand is retried with
capped backoff (sending ``in_progress`` so it is not redelivered meanwhile); while NATS is
down pulls are retried with capped backoff; a vanished consumer or stream
(:class:`~taskflow_common.bus.ConsumerGone`) is recreated. A value Postgres refuses
(bad text, out-of-range time) falls back to the undecodable form; if even that is refused
the message is logged and acked rather than redelivered forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Mapping
from functools import partial

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from taskflow_common import logs, tracing
from taskflow_common.bus import TRANSIENT_ERRORS as NATS_TRANSIENT
from taskflow_common.bus import Bus, ConsumerGone, Puller
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.messages import MAX_RAW_BYTES, DeadLetter
from taskflow_common.metrics import new_registry
from taskflow_common.retry import OUTAGE, Backoff
from taskflow_common.store import deadletters
from taskflow_common.subjects import HEADER_MSG_ID, HEADER_TRACEPARENT
from taskflow_dlq_monitor.metrics import DlqMetrics

log = logs.get_logger(__name__)

UNDECODABLE = "undecodable dead letter"
BACKOFF_START_S = 0.2
"""First pause after a failed pull or store (seconds); doubles per failure."""
BACKOFF_MAX_S = 5.0
"""Longest pause between two tries while NATS or Postgres is away (seconds)."""
MAX_ERROR_CHARS = 2000
"""Longest decoding error kept for an undecodable dead letter (characters)."""

# Faults around a pull: an outage, or NATS refusing to create the stream/consumer
# (APIError, e.g. a foreign stream holds the subject). All are retried with backoff.
_PULL_FAULTS: tuple[type[BaseException], ...] = (*OUTAGE, nats.js.errors.APIError)
_ACK_FAULTS: tuple[type[BaseException], ...] = (*NATS_TRANSIENT, nats.errors.Error)

# Postgres refused the values (class 22 data exceptions, class 23 integrity violations):
# retrying the same row cannot help, so fall back to the raw form.
_REFUSED = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)


async def wait_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; return whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _headers(msg: Msg) -> Mapping[str, str]:
    return msg.headers or {}


def dedupe_key(msg: Msg) -> str:
    """``Nats-Msg-Id`` of ``msg``, else
    ``nomsgid:<stream>:<seq>:<stored time, microseconds>:<sha256 of body, 16 hex>``.

    The stored time and the hash keep two messages apart even if the stream was
    recreated and its sequence numbers started again; a redelivery keeps both.
    """
    given = _headers(msg).get(HEADER_MSG_ID)
    if given:
        return given
    digest = hashlib.sha256(msg.data).hexdigest()[:16]
    try:
        meta = msg.metadata
        stored_us = int(meta.timestamp.timestamp() * 1_000_000)
        return f"nomsgid:{meta.stream}:{meta.sequence.stream}:{stored_us}:{digest}"
    except Exception:  # not a JetStream message: the hash alone must do
        return f"nomsgid:{msg.subject}:{digest}"


def undecodable(msg: Msg, error: str) -> DeadLetter:
    """The dead letter recorded for a body that is not a :class:`DeadLetter`."""
    return DeadLetter(
        reason=UNDECODABLE,
        error=error[:MAX_ERROR_CHARS],
        subject=msg.subject,
        raw=msg.data[:MAX_RAW_BYTES],
        trace_id=tracing.trace_id_of(_headers(msg).get(HEADER_TRACEPARENT)),
    )


def decode(msg: Msg) -> DeadLetter:
    """Decode ``msg`` into a dead letter; never raises.

    A missing ``trace_id`` is taken from the ``traceparent`` header.
    """
    try:
        dl = DeadLetter.decode(msg.data)
    except Exception as exc:  # any body that is not a DeadLetter is recorded raw
        return undecodable(msg, f"{exc.__class__.__name__}: {exc}")
    if dl.trace_id is None:
        trace_id = tracing.trace_id_of(_headers(msg).get(HEADER_TRACEPARENT))
        if trace_id is not None:
            dl = dataclasses.replace(dl, trace_id=trace_id)
    return dl


class DeadLetterConsumer:
    """The loop behind the dlq-monitor; also the source of its health check.

    ``recorded`` counts dead letters newly stored by this process, ``duplicates`` the
    redeliveries that were already stored. ``consuming`` is set after the first
    successful pull; ``last_pull`` is the monotonic time of the latest one.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        *,
        batch_size: int = 64,
        poll_interval_s: float = 0.2,
        tracer: trace.Tracer | None = None,
        metrics: DlqMetrics | None = None,
    ) -> None:
        self.metrics = metrics or DlqMetrics(new_registry())
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.tracer = tracer or trace.get_tracer("taskflow_dlq_monitor")
        self.consuming = asyncio.Event()
        self.last_pull: float | None = None
        self.last_error: str | None = None
        self.recorded = 0
        self.duplicates = 0

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. Never raises for NATS or Postgres faults."""
        puller: Puller | None = None
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        try:
            while not stop.is_set():
                try:
                    if puller is None:
                        puller = await self._open(stop)
                        if puller is None:
                            return
                    msgs = await puller.pull(self.batch_size)
                except ConsumerGone as exc:
                    self._trouble("dlq_consumer_gone", exc)
                    if puller is not None:
                        await puller.close()
                    puller = None
                except _PULL_FAULTS as exc:
                    self._trouble("nats_unavailable", exc)
                else:
                    backoff.reset()
                    self._healthy()
                    if not msgs:
                        await wait_stop(stop, self.poll_interval_s)
                    for msg in msgs:
                        if stop.is_set():
                            break  # unacked ones are redelivered to the next run
                        await self.handle(msg, stop)
                    continue
                if await wait_stop(stop, backoff.failed()):
                    return
        finally:
            if puller is not None:
                await puller.close()

    async def _open(self, stop: asyncio.Event) -> Puller | None:
        """Wait for NATS, make sure the streams and our consumer exist, return a puller."""
        while not self.bus.ready.is_set():
            if await wait_stop(stop, 0.1):
                return None
        await self.bus.ensure_streams()
        await self.bus.ensure_dlq_consumer()
        names = self.bus.names
        puller = await self.bus.puller(names.dlq_stream, names.dlq_consumer)
        log.info("dlq_consumer_open", stream=names.dlq_stream, consumer=names.dlq_consumer)
        return puller

    def _trouble(self, event: str, exc: BaseException) -> None:
        error = f"{exc.__class__.__name__}: {exc}"
        if error != self.last_error:  # one line per change of state, not per retry
            log.warning(event, error=error)
        self.last_error = error

    def _healthy(self) -> None:
        if self.last_error is not None:
            log.info("dlq_consumer_recovered")
        self.last_error = None
        self.last_pull = time.monotonic()
        self.consuming.set()

    # -- one message ----------------------------------------------------------------------

    async def handle(self, msg: Msg, stop: asyncio.Event) -> bool | None:
        """Record ``msg`` once and ack it after the commit.

        Returns True when newly recorded, False when it was already (or could never
        be) recorded, None when ``stop`` came while Postgres was down (not acked).
        """
        headers = _headers(msg)
        key = dedupe_key(msg)
        dl = decode(msg)
        parent = tracing.extract(headers)
        with self.tracer.start_as_current_span(
            "dlq.record", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("taskflow.dead_letter.key", key)
            if dl.task_id is not None:
                span.set_attribute("taskflow.task_id", str(dl.task_id))
            if dl.type is not None:
                span.set_attribute("taskflow.type", dl.type)
            if dl.attempts is not None:
                span.set_attribute("taskflow.attempt", dl.attempts)
            new = await self._store(msg, key, dl, stop)
            if new is None:
                return None
            span.set_attribute("taskflow.dead_letter.new", new)
            if new:
                self.recorded += 1
                self.metrics.dead_letter_recorded(dl.type, dl.priority)
                log.warning(
                    "task_dead_lettered",
                    task_id=str(dl.task_id) if dl.task_id else None,
                    attempt=dl.attempts,
                    type=dl.type,
                    priority=dl.priority,
                    attempts=dl.attempts,
                    error=dl.error,
                    reason=dl.reason,
                    trace_id=dl.trace_id,
                    dedupe_key=key,
                )
            else:
                self.duplicates += 1
                log.debug("dead_letter_duplicate", dedupe_key=key)
        try:
            await msg.ack()
        except _ACK_FAULTS as exc:
            # Recorded already: the redelivery after ack_wait is absorbed by the dedupe key.
            log.warning("dead_letter_ack_failed", dedupe_key=key, error=repr(exc))
        return new

    async def _store(self, msg: Msg, key: str, dl: DeadLetter, stop: asyncio.Event) -> bool | None:
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        fallback = dl.reason == UNDECODABLE and dl.raw is not None
        while True:
            try:
                return await self.db.run(partial(deadletters.record, dedupe_key=key, dl=dl))
            except _REFUSED as exc:
                if fallback:
                    log.error("dead_letter_unrecordable", dedupe_key=key, error=repr(exc))
                    return False
                log.warning("dead_letter_refused", dedupe_key=key, error=repr(exc))
                dl = undecodable(msg, f"refused by postgres: {exc.__class__.__name__}: {exc}")
                fallback = True
                continue
            except (UnavailableError, asyncpg.PostgresError) as exc:
                # Unavailable, or a fault of the installation (missing table, no
                # privilege) that an operator can fix: keep the message and retry.
                self._trouble("postgres_unavailable", exc)
            with contextlib.suppress(*_ACK_FAULTS):
                await msg.in_progress()
            if await wait_stop(stop, backoff.failed()):
                return None
