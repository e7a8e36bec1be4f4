"""``/cases``: list, upload, register, get, download the scan, delete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from .. import schemas as S
from ..deps import NRRD, CaseId, ServiceDep, no_empty_case_id, nrrd_response
from ..errors import Conflict, Invalid
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
    summary="Upload a scan (several files or a 4D file for a case with several images)",
    dependencies=[Depends(no_empty_case_id)],
)
def add_case(
    service: ServiceDep,
    file: Annotated[
        UploadFile,
        File(description="NRRD, NIfTI (.nii/.nii.gz) or MetaImage (.mha); channel 0, or a 4D file"),
    ],
    case_id: Annotated[str | None, Form(max_length=64)] = None,
    channels: Annotated[
        list[UploadFile] | None, File(description="the case's further channels, in order after `file`")
    ] = None,
    channel_names: Annotated[
        str | None, Form(max_length=600, description="comma-separated channel names, e.g. T2,ADC")
    ] = None,
    resample_channels: Annotated[
        Literal["linear", "nearest", "bspline"] | None,
        Form(description="resample channels off channel 0's grid with this interpolation (default: refuse)"),
    ] = None,
) -> S.CaseInfo:
    uploads = [file, *(channels or [])]
    if len(uploads) > S.MAX_CHANNELS:
        raise Invalid(f"{len(uploads)} channel files; a case holds at most {S.MAX_CHANNELS} channels")
    names = _channel_names(channel_names)
    if case_id is not None:
        check_new_case_id(case_id)
    saved: list[tuple[Path, str]] = []
    try:
        for upload in uploads:
            filename = safe_filename(upload.filename)
            suffix = check_upload_suffix(filename, "image")
            saved.append((save_upload(service.ws, upload, suffix, service.max_upload_bytes), filename))
        (tmp, filename), more = saved[0], saved[1:]
        return service.add_uploaded_case(tmp, filename, case_id, more, names, resample_channels)
    finally:
        for path, _ in saved:
            path.unlink(missing_ok=True)


def _channel_names(value: str | None) -> list[str] | None:
    """The comma-separated names of a form field, each checked like RegisterCase's."""
    if value is None or not value.strip():
        return None
    names = [n.strip() for n in value.split(",")]
    bad = [n for n in names if not re.fullmatch(S.CHANNEL_NAME_PATTERN, n)]
    if bad or len(names) > S.MAX_CHANNELS:
        raise Invalid(
            f"channel_names {value!r}: up to {S.MAX_CHANNELS} comma-separated names of letters, digits, "
            "spaces and _+.- (at most 32 characters each, such as T2,ADC)"
        )
    return names


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
    summary="The scan as NRRD (channel 0 of a case with several images, or the channel asked for)",
    response_class=FileResponse,
    responses={200: {"content": {NRRD: {}}}},
)
def get_image(
    service: ServiceDep,
    case_id: CaseId,
    channel: Annotated[int, Query(ge=0, lt=16, description="which channel (0: the first)")] = 0,
) -> FileResponse:
    name = f"{case_id}_image.nrrd" if channel == 0 else f"{case_id}_channel{channel}.nrrd"
    return nrrd_response(service.ws.channel_path(case_id, channel), name)


@router.delete(
    "/cases/{case_id}", response_model=S.Message, summary="Delete a case with its labels and predictions"
)
def delete_case(service: ServiceDep, case_id: CaseId) -> S.Message:
    service.ws.get_case(case_id)
    if service.jobs.uses_case(case_id):
        raise Conflict(f"case {case_id!r} is used by the running training run; stop it or wait, then delete")
    service.ws.delete_case(case_id)
    return S.Message(message=f"case {case_id} deleted")
