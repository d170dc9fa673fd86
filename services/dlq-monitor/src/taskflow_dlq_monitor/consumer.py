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
the message is logged and acked rather than redelivered forever. Any other error Postgres
raises for one message (a trigger, a deadlock, a missing privilege) is tried
:data:`MAX_REFUSALS` times, then the message is nak'd for a later redelivery and the pass
fails: :func:`~taskflow_common.loops.run_loop` logs, counts and backs off, and the messages
behind it are recorded meanwhile.
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
from taskflow_common.loops import LoopErrors, run_loop
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
MAX_REFUSALS = 3
"""Tries of one dead letter that Postgres refuses without an outage before the message is
given back (nak'd with :func:`redelivery_delay`) and the pass fails."""
LOOP = "dlq-consumer"
"""The consumer loop's name in ``loop_failed`` lines and ``taskflow_loop_errors_total``."""
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


def redelivery_delay(msg: Msg) -> float:
    """Seconds to nak a message whose pass failed for: 1, 2, 4, ... by delivery, <= 30."""
    try:
        delivered = msg.metadata.num_delivered or 1
    except Exception:  # not a JetStream message
        delivered = 1
    return float(min(30, 2 ** min(delivered - 1, 5)))


async def _nak(msg: Msg, delay_s: float) -> None:
    with contextlib.suppress(*_ACK_FAULTS):
        await msg.nak(delay=delay_s or None)


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
    ``loop_errors`` counts failed passes (default: on ``metrics``' registry).
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
        loop_errors: LoopErrors | None = None,
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
        self.loop_errors = loop_errors or LoopErrors(self.metrics.registry)
        self._puller: Puller | None = None
        self._backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        self._stop = asyncio.Event()

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; survives any exception of one pass.

        Each pass (:meth:`_pass`) is run by :func:`taskflow_common.loops.run_loop` as the
        loop ``dlq-consumer``: an exception escaping it (a dead letter Postgres refuses
        in a way no retry cures, a bug hit by one odd message) is logged as
        ``loop_failed`` with its class, counted in ``taskflow_loop_errors_total`` and
        backed off; the message it hit was nak'd for a later redelivery.
        """
        self._stop = stop
        try:
            await run_loop(
                LOOP,
                self._pass,
                stop,
                errors=self.loop_errors,
                backoff=Backoff(BACKOFF_START_S, BACKOFF_MAX_S),
            )
        finally:
            if self._puller is not None:
                await self._puller.close()
                self._puller = None

    async def _pass(self) -> float:
        """Pull one batch and handle it; return the seconds to wait before the next.

        NATS away, a refused stream or consumer, or a vanished consumer are expected
        faults: logged once per change of state (``nats_unavailable``,
        ``dlq_consumer_gone``) and retried after :attr:`_backoff`.
        """
        stop = self._stop
        try:
            if self._puller is None:
                self._puller = await self._open(stop)
                if self._puller is None:
                    return 0.0
            msgs = await self._puller.pull(self.batch_size)
        except ConsumerGone as exc:
            self._trouble("dlq_consumer_gone", exc)
            if self._puller is not None:
                await self._puller.close()
            self._puller = None
            return self._backoff.failed()
        except _PULL_FAULTS as exc:
            self._trouble("nats_unavailable", exc)
            return self._backoff.failed()
        self._backoff.reset()
        self._healthy()
        for n, msg in enumerate(msgs):
            if stop.is_set():
                break  # unacked ones are redelivered to the next run
            try:
                await self.handle(msg, stop)
            except Exception:
                # This one comes back later; the rest of the batch at once.
                await _nak(msg, redelivery_delay(msg))
                for rest in msgs[n + 1 :]:
                    await _nak(rest, 0.0)
                raise
        return 0.0 if msgs else self.poll_interval_s

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
        refusals = 0
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
            except OUTAGE as exc:
                # Postgres away: keep the message in hand and retry until it is back.
                self._trouble("postgres_unavailable", exc)
            except asyncpg.PostgresError as exc:
                # Not an outage and not the values (a trigger, a missing table or
                # privilege, a deadlock): a few more tries, then give the message back
                # (the pass fails, the message is nak'd) so those behind it go on.
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    raise
                self._trouble("dead_letter_store_failed", exc)
            with contextlib.suppress(*_ACK_FAULTS):
                await msg.in_progress()
            if await wait_stop(stop, backoff.failed()):
                return None
