"""Liveness and readiness (SPEC §5); no token needed. HEAD answers like GET
(load balancers and container health checks often probe with HEAD)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.openapi import Status, errors

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
@router.head("/healthz", response_model=Status)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, responses=errors(503))
@router.head("/readyz", response_model=Status, responses=errors(503))
async def readyz(service: ServiceDep) -> dict[str, str]:
    await service.store.check()
    await service.repo.check()
    await service.hub.check()
    return {"status": "ready"}
