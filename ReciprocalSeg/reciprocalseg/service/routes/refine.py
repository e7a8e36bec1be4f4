"""Refine a case from strokes (a copy of a round's network adapted to them), and *Accept*."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from .. import schemas as S
from ..deps import NRRD, CaseId, ServiceDep, nrrd_response
from ..refinement import MAX_REFINE_SECONDS, RefineOptions
from ..uploads import safe_filename, save_upload
from ..workspace import check_upload_suffix

router = APIRouter(tags=["refine"])


@router.post(
    "/cases/{case_id}/refine",
    response_model=S.RefineInfo,
    summary="Adapt a copy of the current round's network to the case's strokes and predict the case with it",
)
def refine(
    service: ServiceDep,
    case_id: CaseId,
    file: Annotated[
        UploadFile,
        File(description="strokes on the case's grid: 255 unannotated, 0 background, k class k"),
    ],
    model: Annotated[Literal["student", "teacher"], Form()] = "student",
    seconds: Annotated[
        float | None,
        Form(
            gt=0,
            le=MAX_REFINE_SECONDS,
            allow_inf_nan=False,  # else NaN reads as "should be <= 600", which hides the problem
            description="time limit (default: the device's)",
        ),
    ] = None,
    device: Annotated[Literal["auto", "cpu", "cuda"] | None, Form()] = None,
    author: Annotated[str | None, Form(max_length=200)] = None,
) -> S.RefineInfo:
    service.ws.get_case(case_id)
    filename = safe_filename(file.filename)
    suffix = check_upload_suffix(filename, "strokes map")
    tmp = save_upload(service.ws, file, suffix, service.max_upload_bytes)
    try:
        options = RefineOptions(model=model, seconds=seconds, device=device, author=author)
        return service.refinements.refine(case_id, tmp, filename, options)
    finally:
        tmp.unlink(missing_ok=True)


@router.get("/refine", response_model=S.RefineStatus, summary="The refine in progress, if any")
def refine_status(service: ServiceDep) -> S.RefineStatus:
    return service.refinements.status()


@router.get("/cases/{case_id}/refined", response_model=S.RefineInfo, summary="The case's latest refine")
def refined(service: ServiceDep, case_id: CaseId) -> S.RefineInfo:
    return service.refinements.refined_info(case_id)


@router.get(
    "/cases/{case_id}/refined/labels",
    summary="The refined label map as NRRD",
    response_class=FileResponse,
    responses={200: {"content": {NRRD: {}}}},
)
def refined_labels(service: ServiceDep, case_id: CaseId) -> FileResponse:
    entry, path = service.refinements.refined_path(case_id)
    return nrrd_response(path, f"{case_id}_refined_r{entry['round']}_v{entry['label_version']}.nrrd")


@router.post(
    "/cases/{case_id}/refined/accept",
    response_model=S.LabelVersion,
    summary="Store the refined map as the case's new full label version",
)
def accept_refined(
    service: ServiceDep, case_id: CaseId, author: Annotated[str | None, Query(max_length=200)] = None
) -> S.LabelVersion:
    return service.refinements.accept(case_id, author)
