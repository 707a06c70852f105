"""``GET /spy``: every live stream in one terminal view (SPEC §3)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import ReadAuth, ServiceDep
from app.api.produce import flag
from app.streams.spy import Spy

router = APIRouter()


def meta_filters(request: Request) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("meta.") and len(name) > 5:
            filters.setdefault(name[5:], []).append(value)
    return filters


@router.get("/spy")
async def spy(request: Request, service: ServiceDep, _auth: ReadAuth) -> StreamingResponse:
    query = request.query_params
    body = Spy(
        service,
        color=flag(query, "color"),
        replay=flag(query, "replay"),
        meta=meta_filters(request),
    )
    return StreamingResponse(
        body,
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )
