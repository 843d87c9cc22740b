"""Opaque paging cursors for GET /uploads: the (uploaded_at, upload_id) of a page's last item."""

from __future__ import annotations

import base64
import binascii
import datetime
import re

from upload_service.core.naming import UPLOAD_ID_PATTERN

_UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)


def encode_cursor(uploaded_at: datetime.datetime, upload_id: str) -> str:
    """A URL-safe token for the page that follows this item (newest first)."""
    raw = f"{uploaded_at.isoformat()}|{upload_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    """The ``(uploaded_at, upload_id)`` in a cursor from ``encode_cursor``.

    Raises:
        ValueError: when the text is not such a cursor.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor") from exc
    stamp, _, upload_id = raw.partition("|")
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError("not a cursor")
    uploaded_at = datetime.datetime.fromisoformat(stamp)
    if uploaded_at.tzinfo is None:
        raise ValueError("not a cursor")
    return uploaded_at, upload_id
