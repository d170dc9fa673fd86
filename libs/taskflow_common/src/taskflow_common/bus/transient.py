"""The nats-py errors that mean "NATS or the stream is not answering right now".

A leaf module (no TaskFlow imports) shared by every part of :mod:`taskflow_common.bus`;
:data:`TRANSIENT_ERRORS` is also part of :data:`taskflow_common.retry.OUTAGE`.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

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
"""Errors of a connect, request or publish that a later try may not meet (retry them)."""

CONNECT_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, nats.errors.NoServersError)
"""What a failed (re)connect raises: the transient errors plus "no server answered"."""

PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    nats.js.errors.TooManyStalledMsgsError,
)
"""What ``publish_async`` raises when it cannot take another message right now."""
