"""``/cases/{id}/label``: label versions (upload, download, history, draft from a prediction)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from .. import schemas as S
from ..deps import NRRD, CaseId, ServiceDep, nrrd_response
from ..uploads import safe_filename, save_upload
from ..workspace import check_upload_suffix

router = APIRouter(tags=["labels"])


@router.put(
    "/cases/{case_id}/label",
    response_model=S.LabelVersion,
    summary="Store a new label version (checked against the case's grid and class count)",
)
def put_label(
    service: ServiceDep,
    case_id: CaseId,
    file: Annotated[
        UploadFile,
        File(description="label map on the image's grid, values 0..n_classes-1, and 255 = unannotated"),
    ],
    author: Annotated[str | None, Form(max_length=200)] = None,
    kind: Annotated[Literal["submitted", "draft"], Form()] = "submitted",
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> S.LabelVersion:
    service.ws.get_case(case_id)
    filename = safe_filename(file.filename)
    suffix = check_upload_suffix(filename, "label")
    tmp = save_upload(service.ws, file, suffix, service.max_upload_bytes)
    try:
        return service.put_label(case_id, tmp, filename, author, kind, note)
    finally:
        tmp.unlink(missing_ok=True)


@router.get(
    "/cases/{case_id}/label",
    summary="A label version as NRRD (default: current)",
    response_class=FileResponse,
    responses={200: {"content": {NRRD: {}}}},
)
def get_label(
    service: ServiceDep, case_id: CaseId, version: Annotated[int | None, Query(ge=1)] = None
) -> FileResponse:
    entry, path = service.ws.label_entry(case_id, version)
    return nrrd_response(path, f"{case_id}_label_v{entry['version']}.nrrd")


@router.get(
    "/cases/{case_id}/labels",
    response_model=S.LabelHistory,
    summary="Label history (every version, oldest first)",
)
def label_history(service: ServiceDep, case_id: CaseId) -> S.LabelHistory:
    rec = service.ws.get_case(case_id)
    cur = service.ws.current_label(rec)
    return S.LabelHistory(
        case_id=case_id,
        current=cur["version"] if cur else None,
        versions=[S.LabelVersion(**v) for v in rec["labels"]],
    )


@router.post(
    "/cases/{case_id}/label/from-prediction",
    response_model=S.LabelVersion,
    summary="Store the teacher's prediction as a draft label version to correct",
)
def draft_from_prediction(
    service: ServiceDep, case_id: CaseId, author: Annotated[str | None, Query(max_length=200)] = None
) -> S.LabelVersion:
    return service.draft_from_prediction(case_id, author)
