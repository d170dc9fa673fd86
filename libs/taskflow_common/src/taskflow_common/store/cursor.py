"""The keyset cursor of every listing: "continue strictly after (timestamp, id)".

Task lists page by ``(created_at, id)`` and dead-letter lists by ``(failed_at, id)``; both
hand clients the same opaque text. Format (opaque to clients): base64url, unpadded, of a
version byte, the timestamp in microseconds since the Unix epoch (int64, big-endian) and
the 16 id bytes: 34 characters, described by :data:`CURSOR_PATTERN`.

Every text that matches the pattern decodes: a timestamp outside the years 1..9999
(which no row has) is clamped to that range, so such a cursor reads as "after the end"
or "before the start" of the listing. A cursor is a position, not a credential: one that
was forged well gives the page after the position it names.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import struct
import uuid

from taskflow_common.errors import InvalidCursor

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CURSOR = struct.Struct(">Bq16s")  # version, timestamp in µs since the epoch, id
_VERSION = 1
CURSOR_PATTERN = r"^A[Q-Za-f][A-Za-z0-9_-]{32}$"
"""What a cursor looks like: 25 bytes in base64url (34 characters), version byte 1.

The first character and the top bits of the second spell the version byte 0x01.
"""
_TEXT = re.compile(CURSOR_PATTERN)
_MIN_MICROS = (dt.datetime.min.replace(tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
_MAX_MICROS = (dt.datetime.max.replace(tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
_FOREIGN = "cursor is not one this API returned"


def encode(at: dt.datetime, row_id: uuid.UUID) -> str:
    """Return the opaque cursor for "rows after (``at``, ``row_id``)".

    ``at`` is an aware datetime (kept to the microsecond, as Postgres stores it).
    """
    micros = (at - _EPOCH) // dt.timedelta(microseconds=1)
    raw = _CURSOR.pack(_VERSION, micros, row_id.bytes)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """Invert :func:`encode`: ``(at in UTC, row_id)``.

    Raises :class:`~taskflow_common.errors.InvalidCursor` for any text that does not
    match :data:`CURSOR_PATTERN`; a timestamp beyond Python's datetime range (years
    1..9999) is clamped to it.
    """
    if not _TEXT.match(cursor):
        raise InvalidCursor(_FOREIGN)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        version, micros, id_bytes = _CURSOR.unpack(raw)
        if version != _VERSION:
            raise InvalidCursor(_FOREIGN)
        micros = min(max(micros, _MIN_MICROS), _MAX_MICROS)
        return _EPOCH + dt.timedelta(microseconds=micros), uuid.UUID(bytes=id_bytes)
    except (binascii.Error, struct.error, OverflowError) as exc:
        raise InvalidCursor(_FOREIGN) from exc
