"""``GET /spy``: every live stream in one terminal view (SPEC §3)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import ReadAuth, ServiceDep
from app.api.openapi import META_FILTER, errors, flag_query, params
from app.api.produce import flag
from app.streams.spy import Spy

router = APIRouter(tags=["streams"])


def meta_filters(request: Request) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("meta.") and len(name) > 5:
            filters.setdefault(name[5:], []).append(value)
    return filters


@router.get(
    "/spy",
    response_class=StreamingResponse,
    description=(
        "One endless text response multiplexing every live stream: START: {id}, "
        "{id}: before a run of its lines, END: {id}. " + META_FILTER
    ),
    responses=errors(401, 403) | {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    openapi_extra=params(
        flag_query("color", "Each stream in its own ANSI colour."),
        flag_query("replay", "Show streams live at connect from their start."),
    ),
)
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
