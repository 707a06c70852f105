"""``/files/``: tus 1.0.0 resumable uploads (SPEC §10).

A tus upload is a Weft stream with the same id: creation makes a live stream
(``Upload-Length`` becomes its declared size, ``Upload-Metadata`` its
metadata), each PATCH appends through the stream's one producer, and the domain
completes the stream when its size reaches the declared length. Readers can
tail ``/stream/{id}`` meanwhile. The wire format is in ``app.api.tus_headers``.

Choices where tus leaves room:

- Auth: POST, PATCH and HEAD need ``write`` (a producer needs the offset).
  DELETE (termination) of an unfinished upload needs ``write`` (or ``admin``),
  so an uploader can cancel its own upload; deleting a finished stream needs
  ``admin``, as ``DELETE /stream/{id}`` does. OPTIONS needs no token (CORS preflights carry none).
- A PATCH while another request writes the same upload: 423 Locked (as tusd;
  tus clients retry it). Offset mismatch: 409 with the current ``Upload-Offset``.
- An upload past ``Upload-Expires`` is an ``abandoned`` stream: HEAD and PATCH
  answer 410 Gone (its bytes stay readable at ``/stream/{id}``).
- A finished upload: HEAD reports ``Upload-Length`` = ``Upload-Offset`` = its
  size; a PATCH at that offset answers 204 without storing anything, at any
  other offset 409.
- With ``Upload-Checksum`` the body (at most 64 MiB) is buffered and verified
  before it is stored; without one it is stored chunk by chunk as it arrives.
- ``POST /files/{id}`` with ``X-HTTP-Method-Override`` runs PATCH, HEAD or DELETE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive

from app.api.deps import ServiceDep, WriteAuth, caller_scopes, require_write
from app.api.errors import error_response
from app.api.openapi import (
    COUNT,
    TUS_RESUMABLE,
    TUS_UPLOAD,
    errors,
    in_header,
    no_body,
    params,
    raw_body,
)
from app.api.produce import pump
from app.api.tus_headers import (
    CHECKSUM_BODY_LIMIT,
    Checksum,
    check_room,
    decode_metadata,
    encode_metadata,
    http_date,
    is_offset_octet_stream,
    options_headers,
    parse_checksum,
    require_version,
    response_headers,
)
from app.auth import Authenticator
from app.errors import (
    InvalidInput,
    MethodNotAllowed,
    OffsetMismatch,
    StreamBusy,
    StreamNotFound,
    StreamNotLive,
    TooLarge,
    UnsupportedMediaType,
    UploadGone,
    UploadLocked,
    WeftError,
)
from app.streams.models import StreamInfo, StreamState, parse_count
from app.streams.service import StreamService

log = logging.getLogger("weft.api")


class TusRoute(APIRoute):
    """Checks Tus-Resumable first, renders WeftErrors (auth included) as the
    JSON error, and puts the tus and CORS headers on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                if request.method != "OPTIONS":
                    require_version(request.headers)
                response = await handler(request)
            except WeftError as exc:
                response = error_response(exc.status, exc.message, exc.headers)
            response.headers.update(response_headers())
            return response

        return handle


router = APIRouter(route_class=TusRoute, tags=["tus"], default_response_class=Response)

UPLOAD_BODY = "application/offset+octet-stream"
DISCOVERY: dict[int | str, Any] = {
    204: no_body(
        "The server's tus capabilities (also the CORS preflight answer).",
        Tus_Version="1.0.0",
        Tus_Extension="The supported extensions.",
        Tus_Max_Size="limits.stream_bytes, when set.",
        Tus_Checksum_Algorithm="sha1,sha256,md5",
    )
}
LENGTH = in_header("Upload-Length", "The upload's total size.", COUNT)
METADATA = in_header("Upload-Metadata", "Comma-separated 'key base64value' pairs.")
CHECKSUM = in_header("Upload-Checksum", "'<algorithm> <base64 digest>' of the body.")
DEFER = in_header(
    "Upload-Defer-Length", "1: the length is sent later.", {"type": "string", "enum": ["1"]}
)
APPEND: dict[str, Any] = {
    "status_code": 204,
    "responses": errors(400, 401, 403, 404, 409, 410, 412, 413, 415, 423, 460, 503, 507)
    | {204: no_body("Stored.", **TUS_UPLOAD)},
    "openapi_extra": params(
        TUS_RESUMABLE,
        in_header("Upload-Offset", "The upload's current offset.", COUNT, required=True),
        LENGTH,
        CHECKSUM,
        body=raw_body(UPLOAD_BODY, "Bytes to append at Upload-Offset.", required=True),
    ),
}


@router.options("/files", status_code=204, responses=DISCOVERY)
@router.options("/files/", status_code=204, responses=DISCOVERY)
async def discover(request: Request) -> Response:
    max_size = request.app.state.settings.limits.stream_bytes
    return Response(status_code=204, headers=options_headers(max_size))


@router.options("/files/{upload_id}", status_code=204, responses=DISCOVERY)
async def discover_upload(upload_id: str, request: Request) -> Response:
    # upload_id only names the path parameter: discovery is the same for every upload.
    return await discover(request)


CREATE: dict[str, Any] = {
    "status_code": 201,
    "responses": errors(
        400,
        401,
        403,
        412,
        413,
        460,
        503,
        507,
        notes={
            403: "The token lacks the scope, or a pre-create webhook refused the "
            "upload (its message).",
            503: "The storage or the database failed, or a pre-create webhook did not answer.",
        },
    )
    | {
        201: no_body(
            "Created: a live stream with the same id.",
            Location="/files/{id}",
            X_Stream_Id="The upload's (and stream's) id.",
            **TUS_UPLOAD,
        )
    },
    "openapi_extra": params(
        TUS_RESUMABLE,
        LENGTH,
        DEFER,
        METADATA,
        CHECKSUM,
        body=raw_body(UPLOAD_BODY, "creation-with-upload: the first bytes."),
    ),
}


@router.post("/files", **CREATE)
@router.post("/files/", **CREATE)
async def create_upload(request: Request, service: ServiceDep, _auth: WriteAuth) -> Response:
    headers = request.headers
    length = parse_count(headers.get("upload-length"), "Upload-Length")
    defer = headers.get("upload-defer-length")
    if defer is not None and defer.strip() != "1":
        raise InvalidInput("Upload-Defer-Length must be 1.")
    if (length is None) == (defer is None):
        raise InvalidInput("Send either Upload-Length or Upload-Defer-Length: 1.")
    service.check_fits(length)
    limits = service.settings.limits
    metadata = decode_metadata(headers.get("upload-metadata"), limit=limits.metadata_bytes)
    with_body = is_offset_octet_stream(headers)
    checksum = parse_checksum(headers.get("upload-checksum")) if with_body else None
    if with_body:
        body = parse_count(headers.get("content-length"), "Content-Length")
        service.check_fits(body)
        check_room(offset=0, body=body, total=length, buffered=bool(checksum))
    verified: bytes | None = None
    if checksum is not None:
        # Verify before creating: a mismatch leaves no upload behind.
        verified = await _read_verified(request.receive, checksum)
        if verified is None:
            raise InvalidInput("The request ended before its body; no upload was created.")

    info, _ = await service.create(
        None, metadata, expected_size=length, tus=True, scopes=caller_scopes(request)
    )
    size = 0
    if length == 0:
        await service.declare_size(info.id, 0)  # nothing to wait for: complete now
    elif with_body:
        async with service.producer(info.id) as producer:
            if verified is None:
                await pump(request.receive, producer)
            elif verified:
                await producer.append(verified)
            size = producer.size
    log.info("tus_upload_created stream_id=%s length=%s offset=%d", info.id, length, size)
    created = {"Location": f"/files/{info.id}", "X-Stream-Id": info.id, "Upload-Offset": str(size)}
    return Response(status_code=201, headers=created | _expiry(service, info.id))


@router.head(
    "/files/{upload_id}",
    responses=errors(400, 401, 403, 404, 410, 412)
    | {
        200: no_body(
            "The upload's offset.",
            Upload_Length="Its total size, when declared.",
            Upload_Defer_Length="1 while its length is not declared.",
            Upload_Metadata="Its metadata.",
            **TUS_UPLOAD,
        )
    },
    openapi_extra=params(TUS_RESUMABLE),
)
async def upload_offset(upload_id: str, service: ServiceDep, _auth: WriteAuth) -> Response:
    return await _head(service, upload_id)


@router.patch("/files/{upload_id}", **APPEND)
async def append_upload(
    upload_id: str, request: Request, service: ServiceDep, _auth: WriteAuth
) -> Response:
    return await _patch(request, service, upload_id)


@router.delete(
    "/files/{upload_id}",
    status_code=204,
    responses=errors(400, 401, 403, 404, 412, 503, notes={404: "No such upload made at /files/."})
    | {204: no_body("Terminated: the upload and its stream are gone.")},
    openapi_extra=params(TUS_RESUMABLE),
)
async def terminate_upload(upload_id: str, request: Request, service: ServiceDep) -> Response:
    return await _terminate(request, service, upload_id)


@router.post(
    "/files/{upload_id}",
    status_code=204,
    description="X-HTTP-Method-Override: PATCH, HEAD or DELETE runs that method.",
    responses=errors(400, 401, 403, 404, 405, 409, 410, 412, 413, 415, 423, 460, 503, 507)
    | {
        200: no_body("HEAD's answer.", **TUS_UPLOAD),
        204: no_body("PATCH's or DELETE's answer.", **TUS_UPLOAD),
    },
    openapi_extra=params(
        TUS_RESUMABLE,
        in_header(
            "X-HTTP-Method-Override",
            "The method to run.",
            {"type": "string", "enum": ["PATCH", "HEAD", "DELETE"]},
            required=True,
        ),
        in_header("Upload-Offset", "For PATCH: the upload's current offset.", COUNT),
        LENGTH,
        CHECKSUM,
        body=raw_body(UPLOAD_BODY, "For PATCH: bytes to append."),
    ),
)
async def method_override(upload_id: str, request: Request, service: ServiceDep) -> Response:
    method = request.headers.get("x-http-method-override", "").strip().upper()
    if method == "DELETE":
        return await _terminate(request, service, upload_id)
    require_write(request)
    if method == "PATCH":
        return await _patch(request, service, upload_id)
    if method == "HEAD":
        return await _head(service, upload_id)
    raise MethodNotAllowed("POST to an upload needs X-HTTP-Method-Override: PATCH, HEAD or DELETE.")


async def _head(service: StreamService, upload_id: str) -> Response:
    info = await service.info(upload_id, take_over=True)
    if info.state is StreamState.ABANDONED:
        raise UploadGone(upload_id)
    headers = {"Upload-Offset": str(info.size), "Cache-Control": "no-store"}
    total = info.size if info.state.finished else info.expected_size
    if total is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(total)
    metadata = encode_metadata(info.metadata)
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    return Response(status_code=200, headers=headers | _expiry(service, upload_id))


async def _patch(request: Request, service: StreamService, upload_id: str) -> Response:
    headers = request.headers
    if not is_offset_octet_stream(headers):
        raise UnsupportedMediaType()
    offset = parse_count(headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise InvalidInput("Upload-Offset is required.")
    checksum = parse_checksum(headers.get("upload-checksum"))
    length = parse_count(headers.get("upload-length"), "Upload-Length")
    if length is not None and length < offset:
        raise InvalidInput(f"Upload-Length {length} is less than Upload-Offset {offset}.")
    info = await service.info(upload_id, take_over=True)
    if info.state.finished:
        return _finished(info, offset)
    body = parse_count(headers.get("content-length"), "Content-Length")
    service.check_fits(None if body is None else offset + body)
    check_room(
        offset=offset,
        body=body,
        total=info.expected_size if info.expected_size is not None else length,
        buffered=checksum is not None,
    )
    try:
        async with service.producer(upload_id, offset=offset) as producer:
            if length is not None and length != info.expected_size:
                await service.declare_size(upload_id, length)
            if checksum is None:
                await pump(request.receive, producer)
            else:
                verified = await _read_verified(request.receive, checksum)
                if verified:
                    await producer.append(verified)
            size = producer.size
    except StreamBusy:
        raise UploadLocked(upload_id) from None
    except StreamNotLive:  # it finished since service.info above
        return _finished(await service.info(upload_id), offset)
    return Response(
        status_code=204, headers={"Upload-Offset": str(size)} | _expiry(service, upload_id)
    )


async def _terminate(request: Request, service: StreamService, upload_id: str) -> Response:
    auth: Authenticator = request.app.state.auth
    authorization = request.headers.get("authorization")
    auth.require(authorization, "write", "admin")
    info = await service.info(upload_id)
    if not info.tus:
        # Termination is for tus uploads; other streams are deleted at /stream/{id}
        # with admin scope, so a write token cannot destroy them through here (SPEC §6).
        raise StreamNotFound(upload_id)
    if info.state.finished:
        auth.require(authorization, "admin")
    await service.delete(upload_id)
    log.info("tus_upload_terminated stream_id=%s size=%d", upload_id, info.size)
    return Response(status_code=204)


def _finished(info: StreamInfo, offset: int) -> Response:
    if info.state is StreamState.ABANDONED:
        raise UploadGone(info.id)
    if offset != info.size:
        raise OffsetMismatch(info.id, info.size)
    return Response(status_code=204, headers={"Upload-Offset": str(info.size)})


async def _read_verified(receive: Receive, checksum: Checksum) -> bytes | None:
    """The whole body once it matches its checksum; None when the client left."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > CHECKSUM_BODY_LIMIT:
            raise TooLarge(
                f"A body with Upload-Checksum may be at most {CHECKSUM_BODY_LIMIT} bytes."
            )
        if not message.get("more_body", False):
            break
    checksum.verify(bytes(body))
    return bytes(body)


def _expiry(service: StreamService, upload_id: str) -> dict[str, str]:
    expires = service.expires_at(upload_id)
    return {"Upload-Expires": http_date(expires)} if expires is not None else {}
