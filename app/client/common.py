"""Values shared by the writer and the tail reader: backoff, endpoint, results, HEAD."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from app.client.errors import Retryable, StreamRefused, is_retryable_status, server_message

if TYPE_CHECKING:  # imported where used: bin/stream's path never loads httpx (~150 ms)
    import httpx

USER_AGENT = "weft-client/0.1"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``retries`` attempts after a failure, waiting
    ``min_delay * factor**n`` seconds (at most ``max_delay``) before attempt ``n``."""

    retries: int = 10
    factor: float = 2.0
    min_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.factor < 1 or self.min_delay < 0 or self.max_delay < 0:
            raise ValueError("backoff needs retries >= 0, factor >= 1 and delays >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return float(min(self.max_delay, self.min_delay * self.factor ** min(attempt, 64)))


@dataclass(frozen=True)
class StreamResult:
    """What the server reported when the stream became complete."""

    id: str
    size: int
    sha256: str | None
    state: str


@dataclass(frozen=True)
class Endpoint:
    """The server's base URL split for raw sockets, plus the bearer token."""

    url: str
    token: str | None = field(default=None, repr=False)  # never shown in logs or reprs

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {self.url!r}")

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def origin(self) -> str:
        """``scheme://host:port`` for httpx's base_url (paths carry the URL's prefix)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    @property
    def host_header(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2]

    @property
    def verify(self) -> bool:
        """httpx's ``verify`` for this endpoint. Building the default TLS context
        (certifi's bundle) costs ~80 ms per client, a third of a short run's
        start-up; a plain-http endpoint never negotiates TLS (no redirects are
        followed), so it skips that."""
        return self.tls

    def path(self, stream_id: str | None = None) -> str:
        """``/stream`` or ``/stream/{id}`` under the base URL's own path prefix."""
        prefix = urlsplit(self.url).path.rstrip("/")
        if stream_id is None:
            return f"{prefix}/stream"
        return f"{prefix}/stream/{quote(stream_id, safe='')}"

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


@dataclass(frozen=True)
class HeadInfo:
    """``HEAD /stream/{id}``: stored size, state and (once finished) the digest."""

    offset: int
    state: str
    sha256: str | None
    created: str | None = None  # X-Stream-Created: which incarnation of the id this is
    metadata: str | None = None  # X-Stream-Metadata, as the server sent it

    def result(self, stream_id: str) -> StreamResult:
        return StreamResult(stream_id, self.offset, self.sha256, self.state)


def encode_metadata(metadata: dict[str, Any] | None) -> str | None:
    if metadata is None:
        return None
    # ensure_ascii keeps the header ASCII; the server decodes it to the same JSON.
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=True)


def head_info(status: int, headers: Mapping[str, str], body: bytes, reason: str) -> HeadInfo:
    """Raise StreamRefused or Retryable for a failed HEAD, else its HeadInfo
    (``headers`` keyed by lower-case name)."""
    if status != 200:
        message = server_message(status, body, reason)
        if is_retryable_status(status):
            raise Retryable(message)
        # HEAD has no body: say what the status means.
        if status == 404:
            message = "The stream does not exist (any more)."
        elif status in (401, 403):
            message = "The server refused the token."
        raise StreamRefused(status, message)
    raw_offset = headers.get("upload-offset", "")
    if not raw_offset.isdigit():
        raise Retryable("the server's HEAD answer has no Upload-Offset")
    etag = headers.get("etag", "").strip('"') or None
    return HeadInfo(
        int(raw_offset),
        headers.get("x-stream-state", "live"),
        etag,
        headers.get("x-stream-created") or None,
        headers.get("x-stream-metadata"),
    )


def parse_head(response: httpx.Response) -> HeadInfo:
    return head_info(
        response.status_code, response.headers, response.content, response.reason_phrase
    )


def head(http: httpx.Client, endpoint: Endpoint, stream_id: str) -> HeadInfo:
    import httpx

    try:
        response = http.head(endpoint.path(stream_id), headers=endpoint.headers())
    except httpx.TransportError as exc:
        raise Retryable(
            f"cannot reach {endpoint.host_header}: {exc or type(exc).__name__}"
        ) from exc
    return parse_head(response)


async def ahead(http: httpx.AsyncClient, endpoint: Endpoint, stream_id: str) -> HeadInfo:
    import httpx

    try:
        response = await http.head(endpoint.path(stream_id), headers=endpoint.headers())
    except httpx.TransportError as exc:
        raise Retryable(
            f"cannot reach {endpoint.host_header}: {exc or type(exc).__name__}"
        ) from exc
    return parse_head(response)
