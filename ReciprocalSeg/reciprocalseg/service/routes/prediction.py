"""Prediction: run the current round on a case, stored predictions, the next case to label."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from .. import schemas as S
from ..deps import NRRD, CaseId, ServiceDep, nrrd_response

router = APIRouter(tags=["prediction"])


@router.post(
    "/cases/{case_id}/predict",
    response_model=S.PredictionInfo,
    summary="Run the current round's teacher and student on a case",
)
def predict(service: ServiceDep, case_id: CaseId) -> S.PredictionInfo:
    return service.predict(case_id)


@router.get(
    "/cases/{case_id}/prediction",
    response_model=S.PredictionInfo,
    summary="Stored prediction (default: the current round's, else the latest)",
)
def prediction(
    service: ServiceDep, case_id: CaseId, round: Annotated[int | None, Query(ge=1)] = None
) -> S.PredictionInfo:
    return service.prediction_info(case_id, service.prediction_entry(case_id, round))


@router.get(
    "/cases/{case_id}/prediction/{kind}",
    summary="teacher / student label map or disagreement map as NRRD",
    response_class=FileResponse,
    responses={200: {"content": {NRRD: {}}}},
)
def prediction_file(
    service: ServiceDep,
    case_id: CaseId,
    kind: Literal["teacher", "student", "disagreement"],
    round: Annotated[int | None, Query(ge=1)] = None,
) -> FileResponse:
    entry = service.prediction_entry(case_id, round)
    return nrrd_response(
        service.ws.case_dir(case_id) / entry["files"][kind], f"{case_id}_{kind}_r{entry['round']}.nrrd"
    )


@router.get(
    "/next-case",
    response_model=S.NextCase,
    summary="The unlabelled case where teacher and student disagree most (predicts unscored cases)",
)
def next_case(service: ServiceDep) -> S.NextCase:
    return service.next_case()
