"""The resuming reader (SPEC §3): every byte of a stream exactly once, across drops.

``for chunk in tail(url, stream_id): ...`` replays the stream from ``offset``,
follows it while it is live and ends when it is finished. After a cut
connection or a server restart it reconnects with ``?offset=N``, N being the
bytes already yielded, under exponential backoff.

How the end is told from a cut: a finished stream's response has a
Content-Length, and httpx raises when fewer bytes arrive. A live stream's
chunked response that breaks off has no terminating chunk, and httpx raises
too. A chunked response that ends cleanly means the server ended the tail (the
stream left ``live``, or a ``tail_timeout``): a HEAD then says whether to stop
(finished and every byte read) or to continue from the offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx

from app.client.common import Backoff, Endpoint, HeadInfo, ahead, head
from app.client.errors import (
    RetriesExhausted,
    Retryable,
    StreamRefused,
    is_retryable_status,
    server_message,
)

LONG_CONNECTION = 2.0  # a response that lasted this long was a success: reset the retries


def _timeout(connect: float) -> httpx.Timeout:
    # No read timeout: a live stream may be silent for hours and the server keeps
    # its readers (SPEC §3); TCP errors and the server's own ends still end a read.
    return httpx.Timeout(connect, read=None)


def _check(response: httpx.Response, body: bytes) -> None:
    if response.status_code == 200:
        return
    message = server_message(response.status_code, body, response.reason_phrase)
    if is_retryable_status(response.status_code):
        raise Retryable(f"HTTP {response.status_code}: {message}")
    raise StreamRefused(response.status_code, message)


class _Incarnation:
    """Which incarnation of the stream the bytes so far came from: a stream
    replaced with ``force`` between two connections must not be spliced on."""

    def __init__(self) -> None:
        self.created: str | None = None

    def check(self, response: httpx.Response) -> None:
        created = response.headers.get("x-stream-created")
        if self.created is None:
            self.created = created
        elif created != self.created:
            raise StreamRefused(409, "The stream was replaced while it was being read.")


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.TransportError):
        return f"connection lost: {exc or type(exc).__name__}"
    return str(exc)


def _ended(info: HeadInfo, offset: int) -> bool:
    """After a clean end of a chunked response: is the stream really over?"""
    if info.state == "live":
        return False
    if info.offset < offset:
        raise StreamRefused(409, "The stream was replaced with a shorter one while being read.")
    return info.offset == offset


class _Retries:
    def __init__(self, backoff: Backoff) -> None:
        self.backoff, self.failures = backoff, 0

    def next_delay(self, exc: Exception, *, progressed: bool) -> float:
        if progressed:
            self.failures = 0
        if self.failures >= self.backoff.retries:
            raise RetriesExhausted(f"Gave up after {self.backoff.retries} retries: {exc}") from exc
        self.failures += 1
        return self.backoff.delay(self.failures - 1)


def tail(
    url: str,
    stream_id: str,
    offset: int = 0,
    *,
    token: str | None = None,
    backoff: Backoff | None = None,
    timeout: float = 10.0,
    on_retry: Callable[[int, float, str], None] | None = None,
) -> Iterator[bytes]:
    """Yield the stream's bytes from ``offset`` until it is finished.

    Raises StreamRefused (404, 401, 403, 416 ...) at once and RetriesExhausted
    when the server stays unreachable. ``on_retry(attempt, delay, reason)`` is
    called before each reconnection's pause."""
    endpoint = Endpoint(url, token)
    retries = _Retries(backoff or Backoff())
    incarnation = _Incarnation()
    path = endpoint.path(stream_id)
    with httpx.Client(
        base_url=endpoint.origin, timeout=_timeout(timeout), verify=endpoint.verify
    ) as http:
        while True:
            started, got = time.monotonic(), offset
            try:
                params = {"offset": str(offset)}
                with http.stream("GET", path, params=params, headers=endpoint.headers()) as resp:
                    _check(resp, resp.read() if resp.status_code != 200 else b"")
                    incarnation.check(resp)
                    finite = "content-length" in resp.headers
                    for chunk in resp.iter_raw():
                        offset += len(chunk)
                        yield chunk
                if finite or _ended(head(http, endpoint, stream_id), offset):
                    return
            except (httpx.TransportError, Retryable) as exc:
                progressed = offset > got or time.monotonic() - started >= LONG_CONNECTION
                delay = retries.next_delay(exc, progressed=progressed)
                if on_retry is not None:
                    on_retry(retries.failures, delay, _reason(exc))
                time.sleep(delay)


async def atail(
    url: str,
    stream_id: str,
    offset: int = 0,
    *,
    token: str | None = None,
    backoff: Backoff | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[bytes]:
    """The asyncio version of :func:`tail` (same contract), on httpx.AsyncClient."""
    endpoint = Endpoint(url, token)
    retries = _Retries(backoff or Backoff())
    incarnation = _Incarnation()
    path = endpoint.path(stream_id)
    async with httpx.AsyncClient(
        base_url=endpoint.origin, timeout=_timeout(timeout), verify=endpoint.verify
    ) as http:
        while True:
            started, got = time.monotonic(), offset
            try:
                params = {"offset": str(offset)}
                headers = endpoint.headers()
                async with http.stream("GET", path, params=params, headers=headers) as resp:
                    _check(resp, await resp.aread() if resp.status_code != 200 else b"")
                    incarnation.check(resp)
                    finite = "content-length" in resp.headers
                    async for chunk in resp.aiter_raw():
                        offset += len(chunk)
                        yield chunk
                if finite or _ended(await ahead(http, endpoint, stream_id), offset):
                    return
            except (httpx.TransportError, Retryable) as exc:
                progressed = offset > got or time.monotonic() - started >= LONG_CONNECTION
                await asyncio.sleep(retries.next_delay(exc, progressed=progressed))
