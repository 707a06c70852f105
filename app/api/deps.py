"""Shared dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import Authenticator, Signer
from app.config import Scope
from app.errors import Forbidden, Unauthorized
from app.streams.service import StreamService

SHARE_PARAMS = ("expires", "signature")


def get_service(request: Request) -> StreamService:
    service: StreamService = request.app.state.service
    return service


def authorize(request: Request, *scopes: Scope, stream_id: str | None = None) -> None:
    """Let the request through on a bearer token with one of the scopes, or on a
    share link for this very stream (GET and HEAD only). Raises Unauthorized or
    Forbidden."""
    authenticator: Authenticator = request.app.state.auth
    query = request.query_params
    if not any(name in query for name in SHARE_PARAMS):
        authenticator.require(request.headers.get("authorization"), *scopes)
        return
    if stream_id is not None and request.method in ("GET", "HEAD"):
        signer: Signer = request.app.state.signer
        signer.verify(stream_id, query.get("expires"), query.get("signature"))
        return
    try:
        authenticator.require(request.headers.get("authorization"), *scopes)
    except Unauthorized:
        raise Forbidden("A share link only reads the stream it was made for.") from None


def require_read(request: Request) -> None:
    authorize(request, "read")


def require_stream_read(request: Request, stream_id: str) -> None:
    authorize(request, "read", stream_id=stream_id)


def require_stream_head(request: Request, stream_id: str) -> None:
    authorize(request, "read", "write", stream_id=stream_id)


def require_write(request: Request) -> None:
    authorize(request, "write")


def require_admin(request: Request) -> None:
    authorize(request, "admin")


ServiceDep = Annotated[StreamService, Depends(get_service)]
ReadAuth = Annotated[None, Depends(require_read)]
StreamReadAuth = Annotated[None, Depends(require_stream_read)]
HeadAuth = Annotated[None, Depends(require_stream_head)]
WriteAuth = Annotated[None, Depends(require_write)]
AdminAuth = Annotated[None, Depends(require_admin)]
