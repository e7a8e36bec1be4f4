"""``/cases``: list, upload, register, get, download the scan, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse

from .. import schemas as S
from ..deps import NRRD, CaseId, ServiceDep, no_empty_case_id, nrrd_response
from ..errors import Conflict
from ..uploads import safe_filename, save_upload
from ..workspace import check_new_case_id, check_upload_suffix

router = APIRouter(tags=["cases"])


@router.get("/cases", response_model=S.CaseList, summary="List cases with status and score")
def list_cases(service: ServiceDep) -> S.CaseList:
    current = service.ws.registry().get("current")
    return S.CaseList(cases=[service.case_info(c, current) for c in service.ws.all_cases()])


@router.post(
    "/cases",
    response_model=S.CaseInfo,
    status_code=201,
    summary="Upload a scan",
    dependencies=[Depends(no_empty_case_id)],
)
def add_case(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="NRRD, NIfTI (.nii/.nii.gz) or MetaImage (.mha)")],
    case_id: Annotated[str | None, Form(max_length=64)] = None,
) -> S.CaseInfo:
    filename = safe_filename(file.filename)
    suffix = check_upload_suffix(filename, "image")
    if case_id is not None:
        check_new_case_id(case_id)
    tmp = save_upload(service.ws, file, suffix, service.max_upload_bytes)
    try:
        return service.add_uploaded_case(tmp, filename, case_id)
    finally:
        tmp.unlink(missing_ok=True)


@router.post(
    "/cases/register",
    response_model=S.CaseInfo,
    status_code=201,
    summary="Add a scan from a path on the server (file or DICOM folder); the workspace keeps a copy",
)
def register_case(service: ServiceDep, req: S.RegisterCase) -> S.CaseInfo:
    return service.register_case(req)


@router.get("/cases/{case_id}", response_model=S.CaseInfo, summary="One case")
def get_case(service: ServiceDep, case_id: CaseId) -> S.CaseInfo:
    return service.case_info(service.ws.get_case(case_id), service.ws.registry().get("current"))


@router.get(
    "/cases/{case_id}/image",
    summary="The scan as NRRD",
    response_class=FileResponse,
    responses={200: {"content": {NRRD: {}}}},
)
def get_image(service: ServiceDep, case_id: CaseId) -> FileResponse:
    return nrrd_response(service.ws.image_path(case_id), f"{case_id}_image.nrrd")


@router.delete(
    "/cases/{case_id}", response_model=S.Message, summary="Delete a case with its labels and predictions"
)
def delete_case(service: ServiceDep, case_id: CaseId) -> S.Message:
    service.ws.get_case(case_id)
    if service.jobs.uses_case(case_id):
        raise Conflict(f"case {case_id!r} is used by the running training run; stop it or wait, then delete")
    service.ws.delete_case(case_id)
    return S.Message(message=f"case {case_id} deleted")
