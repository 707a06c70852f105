"""Domain values: stream ids, states, stream info and hub events."""

from __future__ import annotations

import enum
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from app.errors import InvalidInput

ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@-]{1,200}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class StreamState(enum.StrEnum):
    LIVE = "live"
    COMPLETE = "complete"
    ABANDONED = "abandoned"

    @property
    def finished(self) -> bool:
        return self is not StreamState.LIVE


ID_RULE = "A stream ID is 1-200 characters of A-Z a-z 0-9 . _ ~ : @ - and does not start with '.'."


LINK_RULE = (
    "A link name is 1-200 characters of A-Z a-z 0-9 . _ ~ : @ - and does not start with '.'."
)


def validate_link_name(name: str) -> str:
    """Link names follow the stream id rule, so a name is safe in a URL path as it is."""
    if not ID_PATTERN.fullmatch(name) or name.startswith("."):
        raise InvalidInput(LINK_RULE)
    return name


def validate_stream_id(stream_id: str) -> str:
    if not ID_PATTERN.fullmatch(stream_id) or stream_id.startswith("."):
        raise InvalidInput(ID_RULE)
    return stream_id


class _IdClock:
    """ULID-style ids: 48-bit milliseconds then 80 random bits, Crockford base32.

    Within one millisecond the random part is incremented, so ids made by this
    process are strictly increasing and never collide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
            self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | rand
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


new_stream_id = _IdClock().new
new_storage_key = _IdClock().new


MAX_COUNT = 2**63 - 1
METADATA_DEPTH = 32


def parse_count(raw: str | None, name: str) -> int | None:
    """Every number the API reads (SPEC §7): a non-negative decimal integer below
    2**63, or None when absent. The length is bounded before int() sees the text,
    so a 5,000-digit value is a 400 and not int()'s ValueError. Raises InvalidInput."""
    if raw is None:
        return None
    text = raw.strip()
    significant = text.lstrip("0") or "0"
    # str.isdigit() alone also accepts characters like '²' that int() refuses.
    if not (text.isascii() and text.isdigit()) or len(significant) > 19:
        raise InvalidInput(f"{name} must be a whole number from 0 to {MAX_COUNT}.")
    value = int(significant)
    if value > MAX_COUNT:
        raise InvalidInput(f"{name} must be a whole number from 0 to {MAX_COUNT}.")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON syntax, but no JSON can carry it back out
        raise ValueError(f"{text} is out of range")
    return value


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest (a scalar is 0, ``{}`` is 1); iterative,
    so no depth can exhaust the interpreter's stack."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def parse_metadata(raw: bytes | None, *, limit: int) -> dict[str, Any]:
    """Decode an ``X-Stream-Metadata`` header value (SPEC §1): absent is ``{}``; an
    empty value is not JSON."""
    if raw is None:
        return {}
    if len(raw) > limit:
        raise InvalidInput(f"X-Stream-Metadata is larger than {limit} bytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("X-Stream-Metadata is not valid UTF-8.") from None
    too_deep = InvalidInput(f"X-Stream-Metadata nests deeper than {METADATA_DEPTH} levels.")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise too_deep from None
    except ValueError:
        raise InvalidInput("X-Stream-Metadata is not valid JSON.") from None
    if not isinstance(value, dict):
        raise InvalidInput("X-Stream-Metadata must be a JSON object.")
    if json_depth(value) > METADATA_DEPTH:
        raise too_deep
    try:
        # A lone surrogate escape (\ud800) decodes, but is no text: it could
        # never be encoded again for a response.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("X-Stream-Metadata holds an invalid Unicode escape.") from None
    return value


def metadata_matches(metadata: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Top-level equality; a number or boolean matches its JSON text (SPEC §5)."""
    for key, wanted in filters.items():
        if key not in metadata:
            return False
        if not all(metadata_text(metadata[key]) == value for value in wanted):
            return False
    return True


def metadata_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    """Exact microseconds since the epoch (no float rounding)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StreamInfo:
    id: str
    key: str  # storage key of this incarnation; a replaced stream gets a new one
    metadata: dict[str, Any]
    state: StreamState
    size: int
    sha256: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    # Declared total size (a tus Upload-Length): the stream completes on reaching it.
    expected_size: int | None = None
    tus: bool = False  # created through /files/ (only those may be terminated there)

    def with_changes(self, **changes: Any) -> StreamInfo:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "metadata": self.metadata,
            "state": self.state.value,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "finished_at": rfc3339(self.finished_at),
        }


@dataclass(frozen=True)
class Link:
    """A name pointing at a stream id (a job's "latest log"). It names the id, not
    an incarnation: it follows a replaced stream, and answers 404 while no
    stream with the id exists."""

    name: str
    stream_id: str
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stream": self.stream_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


class EventKind(enum.StrEnum):
    CREATED = "created"
    PROGRESS = "progress"  # size advanced
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    DELETED = "deleted"  # also sent for the old incarnation when a stream is replaced


@dataclass(frozen=True)
class HubEvent:
    """A small notification; never carries stream bytes (DESIGN "Hub")."""

    kind: EventKind
    stream_id: str
    key: str
    size: int
    state: StreamState | None = None  # None after deletion
    info: StreamInfo | None = field(default=None, compare=False)
    # A lifecycle event's place in the cluster-wide order (its JetStream sequence,
    # app/storage/nats_hub.py); None from the in-process hub.
    seq: int | None = field(default=None, compare=False)
