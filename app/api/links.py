"""Links: a name that redirects to a stream (issue 12; rules in app/streams/links.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.api.bodies import read_json
from app.api.deps import AdminAuth, ReadAuth, WriteAuth
from app.api.openapi import (
    LINK_NAME,
    STREAM_ID,
    LinkBody,
    LinkList,
    errors,
    in_query,
    json_body,
    no_body,
    params,
)
from app.streams.links import LinkBook, link_target

router = APIRouter(tags=["links"])
PUT_BODY_LIMIT = 4 * 1024  # {"stream": id} is at most a few hundred bytes


def get_links(request: Request) -> LinkBook:
    links: LinkBook = request.app.state.links
    return links


LinksDep = Annotated[LinkBook, Depends(get_links)]
NAME = params(LINK_NAME)


@router.put(
    "/links/{name}",
    response_model=LinkBody,
    responses=errors(400, 401, 403, 404, 413, 503)
    | {201: {"model": LinkBody, "description": "The link was created."}},
    description="Point the link at a stream (200: an existing link was repointed).",
    openapi_extra=params(
        LINK_NAME, body=json_body("LinkRequest", "The stream the link points at.")
    ),
)
async def put_link(name: str, request: Request, links: LinksDep, _auth: WriteAuth) -> JSONResponse:
    # The body is read only after the token was checked (SPEC §7).
    target = link_target(await read_json(request, PUT_BODY_LIMIT))
    link, created = await links.put(name, target)
    return JSONResponse(link.to_json(), status_code=201 if created else 200)


FOLLOW: dict[str, Any] = {
    "status_code": 307,
    "response_class": Response,
    "responses": errors(400, 401, 403, 404, 503)
    | {307: no_body("To the stream.", Location="/stream/{id}, with this request's query.")},
    "description": (
        "Redirect to the stream the link points at, with the query string kept "
        "(`?notail`, `?offset=N`). 404 when the link, or the stream it names, does not exist."
    ),
    "openapi_extra": NAME,
}


@router.get("/links/{name}", **FOLLOW)
async def follow_link(name: str, request: Request, links: LinksDep, _auth: ReadAuth) -> Response:
    link = await links.resolve(name)
    query = request.url.query
    location = f"/stream/{link.stream_id}" + (f"?{query}" if query else "")
    return Response(status_code=307, headers={"Location": location, "Cache-Control": "no-store"})


@router.head("/links/{name}", **FOLLOW)
async def follow_link_head(
    name: str, request: Request, links: LinksDep, _auth: ReadAuth
) -> Response:
    return await follow_link(name, request, links, _auth)


@router.get(
    "/links",
    response_model=LinkList,
    description="By name (byte order).",
    responses=errors(400, 401, 403, 503),
    openapi_extra=params(
        in_query("stream", "Only links pointing at this stream id.", STREAM_ID),
        in_query(
            "limit",
            "At most this many (default 100).",
            {"type": "integer", "minimum": 1, "maximum": 1000},
        ),
        in_query("cursor", "The `next` of the previous page.", LINK_NAME["schema"]),
    ),
)
async def list_links(request: Request, links: LinksDep, _auth: ReadAuth) -> dict[str, Any]:
    query = request.query_params
    page, cursor = await links.page(
        stream_id=query.get("stream"), limit=query.get("limit"), cursor=query.get("cursor")
    )
    return {"links": [link.to_json() for link in page], "next": cursor}


@router.delete(
    "/links/{name}",
    status_code=204,
    response_class=Response,
    responses=errors(400, 401, 403, 404, 503)
    | {204: no_body("The link is gone; the stream stays.")},
    openapi_extra=NAME,
)
async def delete_link(name: str, links: LinksDep, _auth: AdminAuth) -> Response:
    await links.delete(name)
    return Response(status_code=204)
