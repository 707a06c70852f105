"""Listing queries and their opaque cursors (SPEC §5 ``GET /streams``)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from app.errors import InvalidInput
from app.storage.base import ListQuery
from app.streams.models import StreamInfo, StreamState, from_micros, parse_count, to_micros

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR = 512  # characters; a real one is about 60
# Creation times a cursor may name: from the epoch to the end of year 9999.
MAX_CURSOR_MICROS = to_micros(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))


def encode_cursor(info: StreamInfo) -> str:
    raw = json.dumps([to_micros(info.created_at), info.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    bad = InvalidInput("The cursor is not valid.")
    if len(cursor) > MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_us, stream_id = json.loads(raw)
    except (ValueError, binascii.Error, TypeError, RecursionError):
        raise bad from None
    if type(created_us) is not int or not isinstance(stream_id, str):
        raise bad
    if not 0 <= created_us <= MAX_CURSOR_MICROS:
        raise bad
    return created_us, stream_id


def build_query(
    *,
    state: str | None,
    prefix: str | None,
    meta: dict[str, list[str]],
    limit: str | None,
    cursor: str | None,
) -> ListQuery:
    """Validate listing parameters as they came in the query string."""
    if state is not None and state not in {s.value for s in StreamState}:
        raise InvalidInput("state must be one of live, complete, abandoned.")
    count = parse_count(limit, "limit")
    if count is None:
        count = DEFAULT_LIMIT
    elif not 1 <= count <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    before = None
    if cursor:
        created_us, stream_id = decode_cursor(cursor)
        before = (from_micros(created_us), stream_id)
    return ListQuery(
        state=StreamState(state) if state is not None else None,
        prefix=prefix or None,
        meta=meta,
        limit=count,
        before=before,
    )
