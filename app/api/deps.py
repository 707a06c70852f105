"""Shared dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import Authenticator
from app.streams.service import StreamService


def get_service(request: Request) -> StreamService:
    service: StreamService = request.app.state.service
    return service


def _auth(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.auth
    return authenticator


def require_read(request: Request) -> None:
    _auth(request).require(request.headers.get("authorization"), "read")


def require_write(request: Request) -> None:
    _auth(request).require(request.headers.get("authorization"), "write")


def require_read_or_write(request: Request) -> None:
    _auth(request).require(request.headers.get("authorization"), "read", "write")


def require_admin(request: Request) -> None:
    _auth(request).require(request.headers.get("authorization"), "admin")


ServiceDep = Annotated[StreamService, Depends(get_service)]
ReadAuth = Annotated[None, Depends(require_read)]
WriteAuth = Annotated[None, Depends(require_write)]
HeadAuth = Annotated[None, Depends(require_read_or_write)]
AdminAuth = Annotated[None, Depends(require_admin)]
