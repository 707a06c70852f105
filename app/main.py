"""create_app(settings) wires the pieces; the lifespan builds and closes the backends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import docs, health, links, manage, spy, streams, tus, ui
from app.api.access import AccessLog
from app.api.errors import install_error_handlers
from app.api.openapi import install_openapi
from app.api.paths import EncodedSlashGuard
from app.api.produce import ProduceEndpoint, ProduceRoute
from app.auth import Authenticator, Signer, load_signing_key
from app.config import Settings, load_settings
from app.hooks import Hooks
from app.metrics import Metrics
from app.storage.factory import (
    build_backends,
    build_leases,
    build_node_claim,
    build_outbox,
    build_space,
    database_driver,
    store_scheme,
    tail_scheme,
)
from app.streams.links import LinkBook
from app.streams.service import StreamService

log = logging.getLogger("weft")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store, repo, hub = build_backends(settings)
        claim = build_node_claim(settings, repo)
        if claim is not None:
            await claim.take()
        hooks = Hooks(
            settings.hooks,
            policy=settings.hook_delivery,
            outbox=build_outbox(repo),
            node_id=settings.resolved_node_id,
            metrics=metrics,
        )
        service = StreamService(
            settings=settings,
            store=store,
            repo=repo,
            hub=hub,
            metrics=metrics,
            space=build_space(settings),
            leases=build_leases(settings, repo),
            node_id=settings.resolved_node_id,
            pre_create=hooks.pre_create if settings.hooks else None,
        )
        await hub.start()
        await service.start()
        await hooks.start()
        app.state.service = service
        app.state.links = LinkBook(repo)
        app.state.signer = Signer(
            await load_signing_key(settings.signing_key, settings.data_dir, repo)
        )
        log.info(
            "weft_started node_id=%s database=%s store=%s tail=%s namespace=%s",
            settings.resolved_node_id,
            database_driver(settings),
            store_scheme(settings),
            tail_scheme(settings),
            settings.namespace,
        )
        try:
            yield
        finally:
            await hooks.close()
            await service.close()
            if claim is not None:
                await claim.release()

    app = FastAPI(
        title="Weft",
        summary="Live stream recording over HTTP",
        lifespan=lifespan,
        docs_url=None,  # app.api.docs serves it with local assets
        redoc_url=None,
    )
    metrics = Metrics(node_id=settings.resolved_node_id)
    app.state.settings = settings
    app.state.auth = Authenticator(settings.token_specs())
    install_error_handlers(app)
    install_openapi(app)
    produce = ProduceEndpoint()
    for path in ("/stream", "/stream/", "/stream/{stream_id}"):
        app.router.routes.append(ProduceRoute(path, produce, methods=["POST"]))
    app.include_router(streams.router)
    app.include_router(spy.router)
    app.include_router(tus.router)
    app.include_router(manage.router)
    app.include_router(links.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    app.include_router(docs.router)
    app.add_middleware(EncodedSlashGuard)
    app.add_middleware(AccessLog, metrics=metrics)
    return app
