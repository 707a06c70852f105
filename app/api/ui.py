"""The browser viewer (SPEC §11): two pages and their static files.

They hold no stream data, so they need no token: the pages' scripts call the
API, which asks for one. Only files that exist under ``app/ui/static`` with a
plain name are served, so a request cannot leave that directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from app.errors import NotFound

router = APIRouter()

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC_DIR = UI_DIR / "static"
ASSET_NAME = re.compile(r"[A-Za-z0-9_-]+\.[a-z0-9]+")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# No inline script or style anywhere: stream content rendered into the page can
# never run, and a share link's signature never leaves in a Referer.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **COMMON_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _page(name: str) -> FileResponse:
    return FileResponse(UI_DIR / name, media_type=CONTENT_TYPES[".html"], headers=PAGE_HEADERS)


@router.api_route("/ui", methods=["GET", "HEAD"], include_in_schema=False)
async def ui_root(request: Request) -> RedirectResponse:
    query = request.url.query
    # Relative, so it also works behind a proxy that mounts Weft under a prefix.
    return RedirectResponse("ui/" + (f"?{query}" if query else ""), status_code=307)


@router.api_route("/ui/", methods=["GET", "HEAD"], include_in_schema=False)
async def stream_list() -> FileResponse:
    return _page("index.html")


@router.api_route("/ui/stream/{stream_id}", methods=["GET", "HEAD"], include_in_schema=False)
async def stream_page(stream_id: str) -> FileResponse:
    # The page reports a bad or unknown id itself, from the API's answer.
    return _page("stream.html")


@router.api_route("/ui/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = STATIC_DIR / name
    content_type = CONTENT_TYPES.get(path.suffix)
    if not ASSET_NAME.fullmatch(name) or content_type is None or not path.is_file():
        raise NotFound()
    return FileResponse(path, media_type=content_type, headers=COMMON_HEADERS)
