"""Liveness and readiness (SPEC §5); no token needed."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> dict[str, str]:
    await service.store.check()
    await service.repo.check()
    return {"status": "ready"}
