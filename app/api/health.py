"""Liveness and readiness (SPEC §5); no token needed. HEAD answers like GET
(load balancers and container health checks often probe with HEAD)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep

router = APIRouter()


@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route("/readyz", methods=["GET", "HEAD"])
async def readyz(service: ServiceDep) -> dict[str, str]:
    await service.store.check()
    await service.repo.check()
    return {"status": "ready"}
