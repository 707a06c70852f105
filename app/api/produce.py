"""The producer POST (SPEC §2) as a small ASGI app.

Its 201 goes out before the body is read, so it cannot be a StreamingResponse
(under uvicorn that listens for a disconnect and throws body chunks away): it
sends ``http.response.start`` itself, then pulls body messages, at most one
append in flight and AHEAD bytes read ahead, so the server pauses the socket
for a slow disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from app.api.deps import authorize, caller_scopes
from app.auth import Authenticator
from app.errors import Forbidden, StreamExists, WeftError
from app.streams.models import StreamInfo, parse_count, parse_metadata
from app.streams.service import Producer, StreamService

log = logging.getLogger("weft.api")
TRUE_VALUES = {"", "1", "true", "yes", "on"}
AHEAD = 1024 * 1024  # body bytes read while an append is in flight (JetStream's message size)


def flag(query: QueryParams, name: str) -> bool:
    """``?force``, ``?force=true`` and ``?force=1`` are on; absent or ``=false`` is off."""
    return name in query and query[name].lower() in TRUE_VALUES


def content_length(headers: Headers) -> int | None:
    return parse_count(headers.get("content-length"), "Content-Length")


def summary(info: StreamInfo) -> dict[str, Any]:
    return {"id": info.id, "size": info.size, "sha256": info.sha256, "state": info.state.value}


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, WeftError):
        return exc.message
    if isinstance(exc, OSError):
        # Never echo the OSError itself: it names file paths.
        return "The server could not store the stream's bytes."
    return "Internal server error."


async def pump(receive: Receive, producer: Producer, first: Message | None = None) -> bool:
    """Append body messages until the body ends (True) or the client goes (False).
    A client that goes, or is cut by a server stop, leaves the stream live and
    resumable at its size: the one log line that says so.

    One append is in flight at a time; what arrives meanwhile (up to AHEAD bytes,
    then the socket waits) goes out as the next append, in one piece. Appends
    that wait on a round trip (JetStream's acknowledgement) then carry ~1 MB
    rather than uvicorn's 64 KiB chunks, and a lone line still goes out at once."""
    message: Message | None = first if first is not None else await producer.receive(receive)
    buffered: list[bytes] = []  # chunks read while an append is in flight
    ahead = 0  # their bytes
    appending: asyncio.Future[int] | None = None
    receiving: asyncio.Future[Message] | None = None
    try:
        while True:
            if message is not None:
                gone = message["type"] == "http.disconnect"
                chunk = b"" if gone else message.get("body", b"")
                if chunk:
                    buffered.append(chunk)
                    ahead += len(chunk)
                if gone or not message.get("more_body", False):
                    if appending is not None:
                        await appending
                    if buffered:
                        await producer.append(_joined(buffered))
                    if gone:
                        log.info(
                            "stream_left_live stream_id=%s offset=%d",
                            producer.stream_id,
                            producer.size,
                        )
                    return not gone
                message = None
            if appending is not None and (appending.done() or ahead >= AHEAD):
                await appending  # raises what the append raised; waits when AHEAD is full
                appending = None
            if appending is None and buffered:
                appending = asyncio.ensure_future(producer.append(_joined(buffered)))
                buffered, ahead = [], 0
            if appending is None:
                message = await (receiving if receiving is not None else producer.receive(receive))
                receiving = None
                continue
            # The next message, or the end of the append in flight, whichever comes first.
            if receiving is None:
                receiving = asyncio.ensure_future(producer.receive(receive))
            either: set[asyncio.Future[Any]] = {receiving, appending}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done():
                message, receiving = receiving.result(), None
    finally:
        if receiving is not None and not receiving.done():
            receiving.cancel()
        if appending is not None and not appending.done():
            # Never cut an append short (the size would not follow the store):
            # let it end, whatever ended the request.
            with contextlib.suppress(Exception):
                await asyncio.shield(appending)


def _joined(chunks: list[bytes]) -> bytes:
    # A lone chunk (the usual case on local disk, where appends end at once) is not copied.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ProduceEndpoint:
    """``POST /stream``, ``POST /stream/`` and ``POST /stream/{stream_id}``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        service: StreamService = app.state.service
        headers = Headers(scope=scope)
        query = QueryParams(scope.get("query_string", b""))
        request = Request(scope)
        authorize(request, "write")

        stream_id = scope.get("path_params", {}).get("stream_id") or None
        raw_metadata = _raw_header(scope, b"x-stream-metadata")
        metadata = parse_metadata(raw_metadata, limit=service.settings.limits.metadata_bytes)
        service.check_fits(content_length(headers))

        force = flag(query, "force")
        # Replacing destroys a stream, so it takes the admin scope too; on a free
        # id force changes nothing and write is enough (SPEC §6).
        authenticator: Authenticator = app.state.auth
        may_replace = force and authenticator.allows(headers.get("authorization"), "admin")
        try:
            info, replaced = await service.create(
                stream_id, metadata, force=may_replace, scopes=caller_scopes(request)
            )
        except StreamExists:
            if force:
                raise Forbidden(
                    "Replacing an existing stream needs a token with admin scope."
                ) from None
            raise
        async with service.producer(info.id) as producer:
            first: Message | None = None
            if headers.get("expect", "").lower() == "100-continue":
                # uvicorn writes "100 Continue" on the first receive() and never
                # once the response has started: start that receive, let it run
                # up to its wait, and only then send the 201.
                pending = asyncio.ensure_future(receive())
                await asyncio.sleep(0)
            else:
                pending = None
            response_headers = [
                (b"content-type", b"application/json"),
                (b"x-stream-id", info.id.encode()),
                (b"location", f"/stream/{info.id}".encode()),
            ]
            if replaced:
                response_headers.append((b"x-stream-replaced", b"true"))
            await send({"type": "http.response.start", "status": 201, "headers": response_headers})
            try:
                if pending is not None:
                    first = await pending
                if not await pump(receive, producer, first):
                    return
                result: dict[str, Any] = summary(await producer.complete())
            except (WeftError, OSError) as exc:
                log.warning("producer_failed stream_id=%s error=%s", info.id, type(exc).__name__)
                result = {"error": failure_message(exc)}
            body = json.dumps(result).encode() + b"\n"
            await send({"type": "http.response.body", "body": body})


class ProduceRoute(Route):
    """A plain Starlette route that, like FastAPI's, records itself in the scope
    (the access log labels metrics by route)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None
