"""``/settings``: the workspace's class count (background included, as ``train --n-classes``)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import schemas as S
from ..deps import ServiceDep

router = APIRouter(tags=["settings"])


@router.get("/settings", response_model=S.Settings, summary="Class count and whether it follows the labels")
def get_settings(service: ServiceDep) -> S.Settings:
    return service.settings()


@router.put(
    "/settings",
    response_model=S.Settings,
    summary="Fix the class count (background included), or null to let it follow the labels",
)
def put_settings(service: ServiceDep, req: S.SettingsUpdate) -> S.Settings:
    return service.update_settings(req)
