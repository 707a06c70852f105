"""Finding and watching streams: info, listing, share links, events, metrics (SPEC §5, §6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from app.api.deps import AdminAuth, ReadAuth, ServiceDep, StreamReadAuth
from app.api.spy import meta_filters
from app.auth import Signer
from app.streams.listing import build_query
from app.streams.models import is_decimal, metadata_matches

router = APIRouter()
HEARTBEAT_SECONDS = 15.0
MAX_SHARE_TTL = 365 * 24 * 3600


class ShareRequest(BaseModel):
    ttl: float = Field(gt=0, le=MAX_SHARE_TTL)


@router.get("/streams/{stream_id}")
async def stream_info(stream_id: str, service: ServiceDep, _auth: StreamReadAuth) -> JSONResponse:
    info = await service.info(stream_id)
    return JSONResponse(info.to_json())


@router.get("/streams")
async def list_streams(request: Request, service: ServiceDep, _auth: ReadAuth) -> dict[str, Any]:
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
    return {"streams": [info.to_json() for info in page], "next": cursor}


@router.post("/streams/{stream_id}/share")
async def share_stream(
    stream_id: str, body: ShareRequest, request: Request, service: ServiceDep, _auth: ReadAuth
) -> dict[str, str]:
    await service.info(stream_id)
    signer: Signer = request.app.state.signer
    expires, signature = signer.sign(stream_id, body.ttl)
    params = f"expires={expires}&signature={signature}"
    return {
        "url": f"/stream/{stream_id}?{params}",
        "viewer_url": f"/ui/stream/{stream_id}?{params}",
        "expires": str(expires),
    }


@router.get("/events")
async def events(request: Request, service: ServiceDep, _auth: ReadAuth) -> StreamingResponse:
    last = request.headers.get("last-event-id", "").strip()
    after = int(last) if is_decimal(last) else None
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


@router.get("/metrics")
async def metrics(service: ServiceDep, _auth: AdminAuth) -> Response:
    for state, count in (await service.count_by_state()).items():
        service.metrics.streams.labels(state.value).set(count)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
