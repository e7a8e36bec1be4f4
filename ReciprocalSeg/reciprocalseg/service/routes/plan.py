"""``/plan``: the ``auto`` plan of the next round, from the cases' fingerprints."""

from __future__ import annotations

from fastapi import APIRouter

from .. import schemas as S
from ..deps import ServiceDep

router = APIRouter(tags=["training"])


@router.get(
    "/plan",
    response_model=S.PlanInfo,
    summary="The auto plan the next round would train with, on the service's device (404: no label yet)",
)
def get_plan(service: ServiceDep) -> S.PlanInfo:
    return S.PlanInfo(**service.plan())
