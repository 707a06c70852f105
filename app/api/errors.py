"""The one place errors become JSON responses (SPEC §7)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import WeftError

log = logging.getLogger("weft.api")

_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_HTTP_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _weft_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WeftError)
    return error_response(exc.status, exc.message, exc.headers)


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path. Starlette's 405 names only
    the first route that matched the path, and a resource here spans several
    (GET and PATCH of /stream/{id} are two routes, its POST a third)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(exc.status_code, message, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"Invalid {where}: {first.get('msg', 'bad value')}.")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error path=%s", request.url.path, exc_info=exc)
    return error_response(500, "Internal server error.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(WeftError, _weft_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
