"""create_app(settings) wires the pieces; the lifespan builds and closes the backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from app.api import health, spy, streams
from app.api.errors import install_error_handlers
from app.api.produce import ProduceEndpoint
from app.auth import Authenticator
from app.config import Settings, load_settings
from app.storage.factory import build_backends
from app.streams.service import StreamService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store, repo, hub = build_backends(settings)
        service = StreamService(settings=settings, store=store, repo=repo, hub=hub)
        await service.start()
        app.state.service = service
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="Weft",
        summary="Live stream recording over HTTP",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.auth = Authenticator(settings.token_specs())
    install_error_handlers(app)
    produce = ProduceEndpoint()
    for path in ("/stream", "/stream/", "/stream/{stream_id}"):
        app.router.routes.append(Route(path, produce, methods=["POST"]))
    app.include_router(streams.router)
    app.include_router(spy.router)
    app.include_router(health.router)
    return app
