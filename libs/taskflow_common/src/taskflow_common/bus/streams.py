"""Reconcile the streams and durable consumers with the configuration; read their state.

Layout (names from :mod:`taskflow_common.subjects`):

- task stream ``NATS_STREAM_NAME`` on ``<prefix>.high|normal|low``, work-queue retention
  (an acked message is gone), file storage, 120 s duplicate window for ``Nats-Msg-Id``;
- dead-letter stream ``<NATS_STREAM_NAME>_DLQ`` on ``<prefix>.dlq``, limits retention for
  ``DLQ_MAX_AGE`` (30 days by default), so no task consumer can ever receive a dead letter;
- one durable pull consumer per priority (explicit ack, ``ack_wait``/``max_deliver``/
  ``max_ack_pending`` from config, reconciled at start) and one for the dlq-monitor.

Reconciling creates what is missing and updates what differs; it never deletes. Every
function takes the nats-py :class:`~nats.js.client.JetStreamContext` and the installation's
:class:`~taskflow_common.subjects.Names`; :class:`~taskflow_common.bus.Bus` wraps them as
methods.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext

from taskflow_common.bus.transient import TRANSIENT_ERRORS
from taskflow_common.config import CommonSettings
from taskflow_common.errors import ConsumerConfigMismatch, UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.subjects import HEADER_MSG_ID, PRIORITIES, Names, Priority

log = get_logger("taskflow_common.bus")  # one logger for the whole bus, as before the split

DUPLICATE_WINDOW_S = 120.0
"""Server-side dedupe window for ``Nats-Msg-Id`` (the JetStream default, 2 min)."""


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


async def ensure_streams(js: JetStreamContext, names: Names, settings: CommonSettings) -> bool:
    """Create the task and dead-letter streams, or update them to match config.

    Returns True when the task stream did not exist (it was created now), which
    means any message published before is gone. Raises :class:`UnavailableError`
    when JetStream does not answer.
    """
    created = await _ensure_stream(
        js,
        api.StreamConfig(
            name=names.stream,
            subjects=names.task_subjects,
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            discard=api.DiscardPolicy.NEW,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=names.dlq_stream,
            subjects=[names.dlq_subject],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=settings.dlq_max_age,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
    )
    return created


async def stream_created_at(js: JetStreamContext, names: Names) -> str | None:
    """Return the task stream's creation time (ISO string), or None if it is missing.

    Raises :class:`UnavailableError` when JetStream does not answer.
    """
    try:
        info = await js.stream_info(names.stream)
    except nats.js.errors.NotFoundError:
        return None
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
    return info.created.isoformat() if info.created else ""


@dataclass(frozen=True, slots=True)
class StreamState:
    """The task stream's identity and sequence range, as one ``stream_info`` says.

    ``created``: the creation time (ISO string; a stream created again has another one);
    ``first_seq``/``last_seq``: the lowest sequence still held and the last one assigned.
    """

    created: str
    first_seq: int
    last_seq: int


async def stream_state(js: JetStreamContext, names: Names) -> StreamState | None:
    """Return the task stream's :class:`StreamState`, or None if it is missing.

    Raises :class:`UnavailableError` when JetStream does not answer.
    """
    try:
        info = await js.stream_info(names.stream)
    except nats.js.errors.NotFoundError:
        return None
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
    return StreamState(
        info.created.isoformat() if info.created else "",
        info.state.first_seq or 0,
        info.state.last_seq or 0,
    )


@dataclass(frozen=True, slots=True)
class ConsumerPosition:
    """A priority consumer's progress: ``delivered``, the last delivered stream sequence;
    ``pending``, how many messages of its subject the stream holds beyond it."""

    delivered: int
    pending: int


async def consumer_positions(
    js: JetStreamContext, names: Names
) -> dict[Priority, ConsumerPosition]:
    """Each priority consumer's :class:`ConsumerPosition` (zeros when it does not exist).

    Raises :class:`UnavailableError` when JetStream does not answer.
    """
    out: dict[Priority, ConsumerPosition] = {}
    for priority in PRIORITIES:
        try:
            info = await js.consumer_info(names.stream, names.consumer(priority))
        except nats.js.errors.NotFoundError:
            out[priority] = ConsumerPosition(0, 0)
            continue
        except TRANSIENT_ERRORS as exc:
            raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
        delivered = info.delivered.stream_seq if info.delivered else 0
        out[priority] = ConsumerPosition(delivered or 0, info.num_pending or 0)
    return out


async def deleted_seqs(js: JetStreamContext, names: Names) -> set[int]:
    """The sequences between the task stream's first and last that it no longer holds.

    One ``STREAM.INFO`` request with ``deleted_details`` (which nats-py does not expose);
    its size is the stream's ``num_deleted``. Raises :class:`UnavailableError` when
    JetStream does not answer.
    """
    try:
        # nats-py has no deleted_details option: the same request on its own connection.
        msg = await js._nc.request(
            f"{js._prefix}.STREAM.INFO.{names.stream}",
            json.dumps({"deleted_details": True}).encode(),
            timeout=5,
        )
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc
    body = json.loads(msg.data)
    return set(body.get("state", {}).get("deleted") or [])


MESSAGE_ID_CONCURRENCY = 64
"""``get_msg`` requests in flight at once in :func:`message_ids`."""


async def message_ids(
    js: JetStreamContext, names: Names, seqs: Sequence[int]
) -> dict[int, str | None]:
    """The ``Nats-Msg-Id`` of the task stream's message at each of ``seqs``.

    None for a sequence the stream does not hold (acked, deleted, lost). Up to
    :data:`MESSAGE_ID_CONCURRENCY` requests in flight at once (one round trip each, on
    the one connection). Raises :class:`UnavailableError` when JetStream does not answer.
    """
    limit = asyncio.Semaphore(MESSAGE_ID_CONCURRENCY)

    async def one(seq: int) -> tuple[int, str | None]:
        async with limit:
            try:
                msg = await js.get_msg(names.stream, seq=seq)
            except nats.js.errors.NotFoundError:
                return seq, None
        return seq, (msg.headers or {}).get(HEADER_MSG_ID, "")

    try:
        return dict(await asyncio.gather(*(one(q) for q in dict.fromkeys(seqs))))
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> bool:
    try:
        try:
            info = await js.stream_info(config.name)  # type: ignore[arg-type]
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            log.info("stream_created", stream=config.name, subjects=config.subjects)
            return True
        current = info.config
        if (
            sorted(current.subjects or []) != sorted(config.subjects or [])
            or abs((current.max_age or 0.0) - (config.max_age or 0.0)) > 1e-3
            or abs((current.duplicate_window or 0.0) - (config.duplicate_window or 0.0)) > 1e-3
        ):
            await js.update_stream(config)
            log.info("stream_updated", stream=config.name)
        return False
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc


async def ensure_task_consumers(
    js: JetStreamContext, names: Names, wanted: ConsumerSettings
) -> None:
    """Create or update the three priority consumers to ``wanted``.

    An existing consumer with other ``ack_wait``/``max_deliver``/``max_ack_pending``
    is updated in place; if the server refuses, :class:`ConsumerConfigMismatch` is
    raised naming the consumer and both values; we never run on stale settings.
    Raises :class:`UnavailableError` when JetStream does not answer.
    """
    for priority in PRIORITIES:
        await _ensure_consumer(
            js,
            names.stream,
            api.ConsumerConfig(
                durable_name=names.consumer(priority),
                filter_subject=names.task_subject(priority),
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=wanted.ack_wait_s,
                max_deliver=wanted.max_deliver,
                max_ack_pending=wanted.max_ack_pending,
            ),
        )


async def ensure_dlq_consumer(js: JetStreamContext, names: Names, ack_wait_s: float = 30.0) -> None:
    """Create or update the dlq-monitor's durable consumer on the dead-letter stream.

    ``ack_wait_s`` in seconds. Raises like :func:`ensure_task_consumers`.
    """
    await _ensure_consumer(
        js,
        names.dlq_stream,
        api.ConsumerConfig(
            durable_name=names.dlq_consumer,
            filter_subject=names.dlq_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1000,
        ),
    )


async def _ensure_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
    name = config.durable_name
    assert name is not None
    try:
        try:
            info = await js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, config)
            log.info("consumer_created", stream=stream, consumer=name)
            return
        diff = _consumer_diff(info.config, config)
        if not diff:
            return
        try:
            await js.add_consumer(stream, config)
        except nats.js.errors.APIError as exc:
            raise ConsumerConfigMismatch(
                f"consumer {stream}/{name} has {diff} but config wants otherwise and the "
                f"server refused the update ({exc.description}); delete the consumer or "
                "fix the configuration"
            ) from exc
        after = await js.consumer_info(stream, name)
        left = _consumer_diff(after.config, config)
        if left:
            raise ConsumerConfigMismatch(
                f"consumer {stream}/{name} still has {left} after an update"
            )
        log.info("consumer_updated", stream=stream, consumer=name, changed=diff)
    except TRANSIENT_ERRORS as exc:
        raise UnavailableError(f"jetstream unavailable: {exc!r}") from exc


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


async def oldest_waiting(
    nc: NATS, js: JetStreamContext, names: Names, priority: Priority
) -> float | None:
    """Seconds the oldest not-yet-delivered message of ``priority`` has waited.

    None when none waits. Read-only: the task consumer's delivered sequence, then
    the first message on the priority's subject after it (``next_by_subj``). One
    clock only, the server's: the age is the consumer info's server time (``ts``,
    NATS >= 2.10) minus the message's publish time, so a worker whose wall clock is
    off does not promote too early or too late. Raises :class:`UnavailableError`
    when JetStream does not answer.
    """
    stream, subject = names.stream, names.task_subject(priority)
    consumer = names.consumer(priority)
    try:
        # The raw API answer: nats-py's ConsumerInfo drops the server time ``ts``.
        resp = await nc.request(
            f"{api.DEFAULT_PREFIX}.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=5
        )
        info = json.loads(resp.data)
        if "error" in info or not info.get("num_pending"):
            return None  # no such consumer (yet), or nothing waits
        msg = await js.get_msg(
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
