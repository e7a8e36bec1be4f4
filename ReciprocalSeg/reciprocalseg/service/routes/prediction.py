"""Prediction: run a model on a case (the current round, or the live checkpoint of a round in
training), stored predictions, their per-structure QA, the next case to label."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from .. import schemas as S
from ..core import PredictionModel, Ranking, teacher_only_note
from ..deps import NRRD, CaseId, ServiceDep, nrrd_response
from ..errors import NotFound

router = APIRouter(tags=["prediction"])

ModelQuery = Annotated[
    PredictionModel,
    Query(
        description="current: the current round; live: the latest checkpoint of the round in training "
        "(the current round when none is training)"
    ),
]
StoredModelQuery = Annotated[
    PredictionModel, Query(description="live: the case's latest live prediction instead of a round's")
]
RoundQuery = Annotated[int | None, Query(ge=1)]


@router.post(
    "/cases/{case_id}/predict",
    response_model=S.PredictionInfo,
    summary="Run teacher and student on a case (the current round, or ?model=live); with per-structure QA",
)
def predict(service: ServiceDep, case_id: CaseId, model: ModelQuery = "current") -> S.PredictionInfo:
    return service.predict(case_id, model)


@router.get(
    "/cases/{case_id}/prediction",
    response_model=S.PredictionInfo,
    summary="Stored prediction (default: the current round's, else the latest; ?model=live: the live one)",
)
def prediction(
    service: ServiceDep, case_id: CaseId, round: RoundQuery = None, model: StoredModelQuery = "current"
) -> S.PredictionInfo:
    return service.prediction_info(case_id, service.prediction_entry(case_id, round, model == "live"))


@router.get(
    "/cases/{case_id}/qa",
    response_model=S.CaseQA,
    summary="Per-structure QA of a stored prediction, flagged against the labelled cases now",
)
def case_qa(
    service: ServiceDep, case_id: CaseId, round: RoundQuery = None, model: StoredModelQuery = "current"
) -> S.CaseQA:
    return service.case_qa(case_id, round, model == "live")


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
    round: RoundQuery = None,
    model: StoredModelQuery = "current",
) -> FileResponse:
    live = model == "live"
    entry = service.prediction_entry(case_id, round, live)
    if kind not in entry["files"]:
        raise NotFound(f"case {case_id!r}: no {kind} map; {teacher_only_note(entry['round'])}")
    name = f"{case_id}_{kind}_live.nrrd" if live else f"{case_id}_{kind}_r{entry['round']}.nrrd"
    return nrrd_response(service.ws.case_dir(case_id) / entry["files"][kind], name)


@router.get(
    "/next-case",
    response_model=S.NextCase,
    summary="The unlabelled case to label next: most teacher/student disagreement, or ?by=qa most QA flags",
)
def next_case(
    service: ServiceDep,
    by: Annotated[Ranking, Query(description="disagreement (default), or qa: most QA flags first")] = (
        "disagreement"
    ),
) -> S.NextCase:
    return service.next_case(by)
