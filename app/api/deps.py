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


def authorize(request: Request, *scopes: Scope) -> None:
    """Let the request through on a bearer token with one of the scopes. Raises
    Unauthorized, or Forbidden (also for a share link used where it does not apply)."""
    authenticator: Authenticator = request.app.state.auth
    try:
        authenticator.require(request.headers.get("authorization"), *scopes)
    except Unauthorized:
        if any(name in request.query_params for name in SHARE_PARAMS):
            raise Forbidden("A share link only reads the stream it was made for.") from None
        raise


async def authorize_stream(request: Request, stream_id: str, *scopes: Scope) -> None:
    """authorize, or a share link for this very incarnation of the stream (GET and
    HEAD only)."""
    query = request.query_params
    if request.method not in ("GET", "HEAD") or not any(n in query for n in SHARE_PARAMS):
        authorize(request, *scopes)
        return
    found = await get_service(request).find(stream_id)
    signer: Signer = request.app.state.signer
    signer.verify(
        stream_id,
        found.key if found is not None else None,
        query.get("expires"),
        query.get("signature"),
    )


def caller_scopes(request: Request) -> frozenset[str]:
    """The scopes of the request's token (already authorized): what a pre-create
    webhook is told of the caller, never the token itself."""
    authenticator: Authenticator = request.app.state.auth
    return authenticator.scopes_for(request.headers.get("authorization"))


def require_read(request: Request) -> None:
    authorize(request, "read")


async def require_stream_read(request: Request, stream_id: str) -> None:
    await authorize_stream(request, stream_id, "read")


async def require_stream_head(request: Request, stream_id: str) -> None:
    await authorize_stream(request, stream_id, "read", "write")


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
