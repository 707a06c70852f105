"""Finding and watching streams: info, listing, share links, events, metrics (SPEC §5, §6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.bodies import read_json
from app.api.deps import AdminAuth, ReadAuth, ServiceDep, StreamReadAuth
from app.api.openapi import (
    COUNT,
    META_FILTER,
    SHARE_LINK,
    STATE,
    ShareLink,
    StreamDetailBody,
    StreamList,
    errors,
    in_header,
    in_query,
    json_body,
    params,
)
from app.api.spy import meta_filters
from app.auth import Signer
from app.errors import InvalidInput
from app.streams.listing import build_query
from app.streams.models import metadata_matches, parse_count

router = APIRouter(tags=["manage"])
HEARTBEAT_SECONDS = 15.0
MAX_SHARE_TTL = 365 * 24 * 3600


def share_ttl(body: Any) -> float:
    """``{"ttl": seconds}``: a number (not a boolean) above 0 and at most a year."""
    ttl = body.get("ttl") if isinstance(body, dict) else None
    # bool is an int in Python, and true is not a number of seconds.
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_SHARE_TTL:
        raise InvalidInput(f'The body must be {{"ttl": seconds}}, at most {MAX_SHARE_TTL}.')
    return float(ttl)


@router.get(
    "/streams/{stream_id}",
    response_model=StreamDetailBody,
    responses=errors(400, 401, 403, 404),
    openapi_extra=params(*SHARE_LINK),
)
async def stream_info(stream_id: str, service: ServiceDep, _auth: StreamReadAuth) -> JSONResponse:
    info = await service.info(stream_id)
    return JSONResponse(info.to_json() | {"stored_bytes": await service.stored_bytes(info)})


@router.get(
    "/streams",
    response_model=StreamList,
    description=f"Newest first. {META_FILTER}",
    responses=errors(400, 401, 403),
    openapi_extra=params(
        in_query("state", "Only streams in this state.", STATE),
        in_query("prefix", "Only ids that start with this."),
        in_query(
            "limit",
            "At most this many (default 100).",
            {"type": "integer", "minimum": 1, "maximum": 1000},
        ),
        in_query("cursor", "The `next` of the previous page."),
    ),
)
async def list_streams(request: Request, service: ServiceDep, _auth: ReadAuth) -> JSONResponse:
    query = request.query_params
    page, cursor = await service.list_page(
        build_query(
            state=query.get("state"),
            prefix=query.get("prefix"),
            meta=meta_filters(request),
            limit=query.get("limit"),
            cursor=query.get("cursor"),
        )
    )
    # json.dumps, not FastAPI's pydantic serializer: that one gives up at 255
    # levels of nesting, and one stream's deep metadata would break every list.
    return JSONResponse({"streams": [info.to_json() for info in page], "next": cursor})


@router.post(
    "/streams/{stream_id}/share",
    response_model=ShareLink,
    responses=errors(400, 401, 403, 404, 413),
    openapi_extra=params(body=json_body("ShareRequest", "How long the link reads the stream.")),
)
async def share_stream(
    stream_id: str, request: Request, service: ServiceDep, _auth: ReadAuth
) -> dict[str, str]:
    # The body is read only here, after the token was checked (SPEC §7).
    ttl = share_ttl(await read_json(request))
    info = await service.info(stream_id)
    signer: Signer = request.app.state.signer
    expires, signature = signer.sign(stream_id, info.key, ttl)
    params = f"expires={expires}&signature={signature}"
    return {
        "url": f"/stream/{stream_id}?{params}",
        "viewer_url": f"/ui/stream/{stream_id}?{params}",
        "expires": str(expires),
    }


@router.get(
    "/events",
    response_class=StreamingResponse,
    description=(
        "Server-Sent Events, endless: `event:` is created, completed, abandoned or deleted "
        f"and `data:` the stream's info as JSON. {META_FILTER}"
    ),
    responses=errors(400, 401, 403)
    | {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    openapi_extra=params(in_header("Last-Event-ID", "Resume after this event id.", COUNT)),
)
async def events(request: Request, service: ServiceDep, _auth: ReadAuth) -> StreamingResponse:
    after = parse_count(request.headers.get("last-event-id") or None, "Last-Event-ID")
    filters = meta_filters(request)

    async def body() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        async for event in service.events.follow(after, heartbeat=HEARTBEAT_SECONDS):
            if event is None:
                yield b": keepalive\n\n"
            elif metadata_matches(event.info.metadata, filters):
                data = json.dumps(event.info.to_json(), separators=(",", ":"))
                yield f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses=errors(401, 403)
    | {
        200: {
            "description": "Prometheus text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(service: ServiceDep, _auth: AdminAuth) -> Response:
    for state, count in (await service.count_by_state()).items():
        service.metrics.streams.labels(state.value).set(count)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
