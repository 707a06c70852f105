"""``/docs``: Swagger UI for ``/openapi.json``, served with no CDN.

The page's script and stylesheet are Swagger UI 5.33.1's ``swagger-ui-dist``
files, vendored under ``app/ui/static/swagger-ui`` (Apache-2.0, its LICENSE
beside them; taken from the drf-spectacular-sidecar wheel), so the docs work
on a machine without internet. The favicon is the viewer's.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from app.api.ui import COMMON_HEADERS, CONTENT_TYPES, STATIC_DIR
from app.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS_DIR = STATIC_DIR / "swagger-ui"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


@router.api_route("/docs", methods=["GET", "HEAD"])
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/ui/static/favicon.svg",
        # Swagger UI would otherwise show a badge fetched from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.api_route("/docs/static/{name}", methods=["GET", "HEAD"])
async def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound()
    path = ASSETS_DIR / name
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=COMMON_HEADERS)
