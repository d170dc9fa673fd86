"""Read TaskFlow's JetStream layout from a server, without changing anything.

Only read-only JetStream API calls are made (``$JS.API.INFO``, ``STREAM.INFO``,
``CONSUMER.LIST``); nothing here creates, updates or deletes a stream or consumer.
Field names follow nats-py's (``ack_wait``, ``max_age``, ``duplicate_window``...), but
every duration is in seconds (float; the server's own JSON uses nanoseconds), sizes in
bytes, times RFC 3339 UTC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api

from taskflow_common.bus import MIN_SERVER_VERSION
from taskflow_common.config import CommonSettings, mask_url
from taskflow_common.errors import TaskFlowError
from taskflow_common.subjects import PRIORITIES, Names


class Unreachable(TaskFlowError, ConnectionError):
    """NATS (or its JetStream API) does not answer; the CLI exits 4."""


@dataclass(frozen=True, slots=True)
class ConsumerReport:
    """One durable consumer of ``stream``: config and state as the server reports them.

    ``config`` keys: ack_policy, deliver_policy, ack_wait (s), max_deliver,
    max_ack_pending, max_waiting, backoff (list of s, or null), filter_subject (the first
    filter or null), filter_subjects (all filters).
    ``state`` keys: num_pending, num_ack_pending, num_redelivered, num_waiting,
    delivered_stream_seq, ack_floor_stream_seq, last_active (RFC 3339 or null), paused.
    ``expected`` says whether TaskFlow's services create this consumer.
    """

    name: str
    stream: str
    expected: bool
    config: dict[str, Any]
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamReport:
    """One TaskFlow stream (``role`` ``tasks`` or ``dead_letters``).

    When ``exists`` is false, ``config`` and ``state`` are empty.
    ``config`` keys: subjects, retention, storage, max_age (s, 0 = unlimited),
    duplicate_window (s), max_msgs, max_bytes, max_msg_size (-1 = unlimited), discard,
    num_replicas. ``state`` keys: messages, bytes, first_seq, last_seq, consumer_count,
    subjects (``{subject: messages}``).
    """

    name: str
    role: str
    exists: bool
    created: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything js-info prints; ``to_json()`` is the ``--json`` output.

    ``consumers`` lists every consumer of the TaskFlow streams (TaskFlow's own first);
    ``missing_consumers`` the ones TaskFlow's services create that do not exist
    (``{"stream", "name"}``), e.g. before the workers first started.
    """

    server: dict[str, Any]
    names: dict[str, str]
    streams: list[StreamReport]
    consumers: list[ConsumerReport]
    missing_consumers: list[dict[str, str]]

    @property
    def missing_streams(self) -> list[str]:
        """Names of TaskFlow streams the server does not have."""
        return [s.name for s in self.streams if not s.exists]

    def consumers_of(self, stream: str) -> list[ConsumerReport]:
        """The consumers of ``stream``, in report order."""
        return [c for c in self.consumers if c.stream == stream]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data with stable keys (see the dataclasses)."""
        out = asdict(self)
        out["missing_streams"] = self.missing_streams
        return out


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enum(value: object) -> object:
    return getattr(value, "value", value)


def _filters(config: api.ConsumerConfig) -> list[str]:
    found = list(config.filter_subjects or [])
    if config.filter_subject:
        found.insert(0, config.filter_subject)
    return found


def consumer_report(info: api.ConsumerInfo, expected: bool) -> ConsumerReport:
    """Flatten nats-py's ConsumerInfo into a :class:`ConsumerReport`."""
    cfg = info.config
    filters = _filters(cfg)
    return ConsumerReport(
        name=info.name,
        stream=info.stream_name,
        expected=expected,
        config={
            "ack_policy": _enum(cfg.ack_policy),
            "deliver_policy": _enum(cfg.deliver_policy),
            "ack_wait": cfg.ack_wait,
            "max_deliver": cfg.max_deliver,
            "max_ack_pending": cfg.max_ack_pending,
            "max_waiting": cfg.max_waiting,
            "backoff": list(cfg.backoff) if cfg.backoff else None,
            "filter_subject": filters[0] if filters else None,
            "filter_subjects": filters,
        },
        state={
            "num_pending": info.num_pending or 0,
            "num_ack_pending": info.num_ack_pending or 0,
            "num_redelivered": info.num_redelivered or 0,
            "num_waiting": info.num_waiting or 0,
            "delivered_stream_seq": info.delivered.stream_seq if info.delivered else 0,
            "ack_floor_stream_seq": info.ack_floor.stream_seq if info.ack_floor else 0,
            "last_active": _iso(info.delivered.last_active if info.delivered else None),
            "paused": bool(info.paused),
        },
    )


def stream_report(info: api.StreamInfo, role: str) -> StreamReport:
    """Flatten nats-py's StreamInfo (fetched with ``subjects_filter='>'``)."""
    cfg, state = info.config, info.state
    return StreamReport(
        name=cfg.name or "",
        role=role,
        exists=True,
        created=_iso(info.created),
        config={
            "subjects": list(cfg.subjects or []),
            "retention": _enum(cfg.retention),
            "storage": _enum(cfg.storage),
            "max_age": cfg.max_age or 0.0,
            "duplicate_window": cfg.duplicate_window or 0.0,
            "max_msgs": cfg.max_msgs,
            "max_bytes": cfg.max_bytes,
            "max_msg_size": cfg.max_msg_size,
            "discard": _enum(cfg.discard),
            "num_replicas": cfg.num_replicas,
        },
        state={
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
            "consumer_count": state.consumer_count,
            "subjects": dict(sorted((state.subjects or {}).items())),
        },
    )


async def _connect(url: str, timeout_s: float) -> NATS:
    seen: list[Exception] = []

    async def quiet(exc: Exception) -> None:
        # Keep the cause for the message (connect() itself raises only NoServersError)
        # and keep nats-py from logging tracebacks.
        seen.append(exc)

    try:
        # One attempt: nats-py keeps retrying a refused first connection forever with
        # max_reconnect_attempts=0, so ask for 1 and bound the whole call as well.
        return await asyncio.wait_for(
            nats.connect(
                servers=[url],
                name="js-info",
                connect_timeout=timeout_s,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
            ),
            timeout=timeout_s * 2 + 1,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        cause = seen[-1] if seen else exc
        detail = str(cause) or cause.__class__.__name__
        raise Unreachable(f"cannot connect to NATS at {mask_url(url)}: {detail}") from exc


async def collect(settings: CommonSettings, timeout_s: float = 5.0) -> Report:
    """Connect to ``NATS_URL`` and read the TaskFlow streams and consumers named by settings.

    Raises :class:`Unreachable` when NATS cannot be reached or JetStream does not answer.
    A missing stream is reported (``exists: false``), not raised.
    """
    names = Names.from_settings(settings)
    nc = await _connect(settings.nats_url, timeout_s)
    try:
        js = nc.jetstream(timeout=timeout_s)
        version = nc.connected_server_version
        try:
            account = await js.account_info()
        except nats.errors.NoRespondersError as exc:
            raise Unreachable(
                f"NATS at {mask_url(settings.nats_url)} has no JetStream (start it with -js)"
            ) from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise Unreachable("JetStream did not answer in time") from exc
        server = {
            "url": mask_url(settings.nats_url),
            "version": f"{version.major}.{version.minor}.{version.patch}",
            "supported": (version.major, version.minor) >= MIN_SERVER_VERSION,
            "max_payload": nc.max_payload,
            "jetstream": {
                "streams": account.streams,
                "consumers": account.consumers,
                "memory_bytes": account.memory,
                "storage_bytes": account.storage,
            },
        }
        layout = [
            (names.stream, "tasks", [names.consumer(p) for p in PRIORITIES]),
            (names.dlq_stream, "dead_letters", [names.dlq_consumer]),
        ]
        streams: list[StreamReport] = []
        consumers: list[ConsumerReport] = []
        missing: list[dict[str, str]] = []
        for stream, role, expected in layout:
            try:
                info = await js.stream_info(stream, subjects_filter=">")
                found = await js.consumers_info(stream)
            except nats.js.errors.NotFoundError:
                streams.append(StreamReport(name=stream, role=role, exists=False))
                continue
            except (nats.errors.TimeoutError, TimeoutError) as exc:
                raise Unreachable(f"JetStream did not answer about {stream} in time") from exc
            streams.append(stream_report(info, role))
            # TaskFlow's own consumers first, in layout order; any others after, by name.
            order = {name: i for i, name in enumerate(expected)}
            found.sort(key=lambda c: (order.get(c.name, len(order)), c.name))
            consumers += [consumer_report(c, c.name in order) for c in found]
            names_found = {c.name for c in found}
            missing += [{"stream": stream, "name": n} for n in expected if n not in names_found]
        return Report(
            server=server,
            names={
                "stream": names.stream,
                "dlq_stream": names.dlq_stream,
                "consumer_prefix": names.consumer_prefix,
                "subject_prefix": names.prefix,
            },
            streams=streams,
            consumers=consumers,
            missing_consumers=missing,
        )
    finally:
        await nc.close()
