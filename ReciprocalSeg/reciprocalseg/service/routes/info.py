"""``/health`` and ``/info``."""

from __future__ import annotations

from fastapi import APIRouter

from .. import schemas as S
from ..deps import ServiceDep

router = APIRouter(tags=["info"])


@router.get("/health", response_model=S.Message, summary="Liveness (no token needed)")
def health() -> S.Message:
    return S.Message(message="ok")


@router.get("/info", response_model=S.ServiceInfo, summary="Version, device and counts")
def info(service: ServiceDep) -> S.ServiceInfo:
    return service.info()
