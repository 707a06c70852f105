"""Reading and managing one stream: GET, HEAD, PATCH, DELETE (SPEC §3, §4, §5)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import AdminAuth, HeadAuth, ServiceDep, StreamReadAuth, WriteAuth
from app.api.encoding import negotiate
from app.api.openapi import (
    COUNT,
    SHARE_LINK,
    STREAM_HEADERS,
    UPLOAD_OFFSET,
    DeletedBuild,
    errors,
    flag_query,
    in_header,
    in_query,
    no_body,
    octets,
    params,
    raw_body,
)
from app.api.produce import content_length, flag, pump
from app.api.protocol import CUT_EXTENSION
from app.api.ranges import parse_range
from app.errors import BodyCut, InvalidInput, NotReady
from app.streams.encoding import encoded
from app.streams.models import StreamInfo, StreamState, parse_count, rfc3339

router = APIRouter(tags=["streams"])
log = logging.getLogger("weft.api")
T = TypeVar("T")


def stream_headers(info: StreamInfo) -> dict[str, str]:
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Stream-Id": info.id,
        "X-Stream-State": info.state.value,
        # Tells a resuming reader that the stream was not replaced in between.
        "X-Stream-Created": rfc3339(info.created_at) or "",
        # ensure_ascii keeps the header value ASCII; it decodes to the same JSON.
        "X-Stream-Metadata": json.dumps(info.metadata, separators=(",", ":")),
        "Cache-Control": "no-store" if info.state is StreamState.LIVE else "no-cache",
    }
    if info.state.finished and info.sha256:
        digest = base64.b64encode(bytes.fromhex(info.sha256)).decode()
        headers["ETag"] = f'"{info.sha256}"'
        headers["Repr-Digest"] = f"sha-256=:{digest}:"
        headers["Accept-Ranges"] = "bytes"
    return headers


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: ``*`` or a list of tags, compared weakly."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


class StreamBody(StreamingResponse):
    """A stream's bytes, which the reader may have to cut short (BodyCut): the
    connection is then closed before the body ends, so the client sees an
    incomplete response rather than a complete one with the wrong bytes."""

    _cut: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._cut = scope.get("extensions", {}).get(CUT_EXTENSION)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except (BodyCut, NotReady) as exc:  # NotReady: the bucket went away mid-body
            if isinstance(exc, NotReady):
                log.warning("read_cut error=%s", exc.message)
            if self._cut is None:
                raise  # another server: it closes the connection on an exception
            self._cut()


async def prefetched(chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """chunks, with the first one read now, before any header is sent: a store
    that cannot be read (the bucket is down) is then a 503 with a JSON body
    instead of a response cut after its headers."""
    first: T | None = None
    cut: BodyCut | None = None
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        pass
    except BodyCut as exc:  # a bad first block: cut after the headers, as any other
        cut = exc

    async def body() -> AsyncIterator[T]:
        if cut is not None:
            raise cut
        if first is not None:
            yield first
            async for chunk in chunks:
                yield chunk

    return body()


@router.head(
    "/stream/{stream_id}",
    response_class=Response,
    responses=errors(400, 401, 403, 404)
    | {200: no_body("GET's headers, no body.", **STREAM_HEADERS, Upload_Offset="The size.")},
    openapi_extra=params(*SHARE_LINK),
)
async def head_stream(stream_id: str, service: ServiceDep, _auth: HeadAuth) -> Response:
    # A resuming producer asks here: a stream whose node died is taken over first.
    info = await service.info(stream_id, take_over=True)
    headers = stream_headers(info)
    headers["Upload-Offset"] = str(info.size)
    response = Response(status_code=200, headers=headers)
    if info.state.finished:
        response.headers["Content-Length"] = str(info.size)
    else:
        del response.headers["Content-Length"]  # a live GET is chunked, with no length
    return response


@router.get(
    "/stream/{stream_id}",
    response_class=Response,
    responses=errors(400, 401, 403, 404, 416)
    | {
        200: octets(
            "The content: a finished stream's whole, then the end; a live one's so far, "
            "then each chunk as it is stored until the stream leaves live (chunked).",
            **STREAM_HEADERS,
            X_Stream_Offset="The offset the body starts at, with ?offset.",
        ),
        206: octets("The requested range of a finished stream.", Content_Range="bytes a-b/size"),
        304: no_body("If-None-Match matched the ETag of a finished stream."),
    },
    openapi_extra=params(
        in_query("offset", "Start at this byte (a live stream waits for it).", COUNT),
        flag_query("notail", "Only what is stored now, then end."),
        in_header("Range", "bytes=a-b or bytes=-n on a finished stream (206); ignored when live."),
        in_header("If-None-Match", "An ETag: 304 when a finished stream has it."),
        *SHARE_LINK,
    ),
)
async def get_stream(
    stream_id: str, request: Request, service: ServiceDep, _auth: StreamReadAuth
) -> Response:
    query = request.query_params
    offset = parse_count(query.get("offset"), "offset")
    reader = await service.reader(stream_id, offset=offset or 0, tail=not flag(query, "notail"))
    info = reader.info
    headers = stream_headers(info)
    status = 200
    if offset is not None:
        headers["X-Stream-Offset"] = str(offset)
    elif info.state.finished:
        ranged = "range" in request.headers
        offered = service.offers_encoding and not ranged
        coding = negotiate(request.headers.get("accept-encoding")) if offered else None
        if service.offers_encoding:
            headers["Vary"] = "Accept-Encoding"
        if coding is not None:
            # Another representation: its own ETag, and no Repr-Digest (that
            # would be the digest of the encoded bytes, not known before they are sent).
            headers["ETag"] = f'"{info.sha256}.{coding}"'
            headers.pop("Repr-Digest", None)
        etag = headers.get("ETag")
        if etag and etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        if coding is not None:
            headers["Content-Encoding"] = coding  # no Content-Length: not known up front
            body = await prefetched(encoded(reader, coding))
            return StreamBody(body, status_code=200, headers=headers)
        span = parse_range(request.headers.get("range"), info.size)
        if span is not None:
            reader.start, reader.end = span
            status = 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{info.size}"
    if reader.end is None:
        return StreamBody(reader, status_code=status, headers=headers)
    headers["Content-Length"] = str(reader.end - reader.start)
    return StreamBody(await prefetched(aiter(reader)), status_code=status, headers=headers)


@router.patch(
    "/stream/{stream_id}",
    status_code=204,
    response_class=Response,
    responses=errors(
        400,
        401,
        403,
        404,
        409,
        413,
        503,
        507,
        notes={
            409: "The offset is not the size (Upload-Offset tells it), the stream is "
            "not live, or another producer is writing."
        },
    )
    | {204: no_body("Stored.", Upload_Offset="The new size.")},
    openapi_extra=params(
        UPLOAD_OFFSET,
        in_header("Upload-Complete", "?1: complete the stream once this body is stored."),
        body=raw_body("application/octet-stream", "Bytes to append."),
    ),
)
async def resume_stream(
    stream_id: str, request: Request, service: ServiceDep, _auth: WriteAuth
) -> Response:
    offset = parse_count(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise InvalidInput("Upload-Offset is required to resume a stream.")
    complete = request.headers.get("upload-complete", "").strip() == "?1"
    length = content_length(request.headers)
    async with service.producer(stream_id, offset=offset) as producer:
        # Checked once the offset is known to be right: a wrong offset is the
        # answer a resuming producer needs first (409 with Upload-Offset).
        service.check_fits(None if length is None else offset + length)
        if not await pump(request.receive, producer):
            return Response(status_code=204, headers={"Upload-Offset": str(producer.size)})
        size = producer.size
        if complete:
            size = (await producer.complete()).size
    return Response(status_code=204, headers={"Upload-Offset": str(size)})


@router.delete(
    "/stream/build/{build_id}", response_model=DeletedBuild, responses=errors(401, 403, 503)
)
async def delete_build(build_id: str, service: ServiceDep, _auth: AdminAuth) -> dict[str, Any]:
    deleted = await service.delete_build(build_id)
    return {"status": "deleted", "buildId": build_id, "deleted": deleted}


@router.delete(
    "/stream/{stream_id}",
    status_code=204,
    response_class=Response,
    responses=errors(400, 401, 403, 404, 503)
    | {204: no_body("Deleted: its bytes and metadata are gone.")},
)
async def delete_stream(stream_id: str, service: ServiceDep, _auth: AdminAuth) -> Response:
    await service.info(stream_id)  # validates the id
    await service.delete(stream_id)
    return Response(status_code=204)
