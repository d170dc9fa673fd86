"""The keyset cursor of every listing: "continue strictly after (timestamp, id)".

Task lists page by ``(created_at, id)`` and dead-letter lists by ``(failed_at, id)``; both
hand clients the same opaque text. Format (opaque to clients): base64url, unpadded, of a
version byte, the timestamp in microseconds since the Unix epoch (int64, big-endian) and
the 16 id bytes: 34 characters.
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
_TEXT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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

    Raises :class:`~taskflow_common.errors.InvalidCursor` for any text :func:`encode`
    did not produce.
    """
    if not _TEXT.match(cursor):
        raise InvalidCursor(_FOREIGN)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        version, micros, id_bytes = _CURSOR.unpack(raw)
        if version != _VERSION:
            raise InvalidCursor(_FOREIGN)
        return _EPOCH + dt.timedelta(microseconds=micros), uuid.UUID(bytes=id_bytes)
    except (binascii.Error, struct.error, OverflowError) as exc:
        raise InvalidCursor(_FOREIGN) from exc
