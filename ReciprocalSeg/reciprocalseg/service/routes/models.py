"""``/models``: model rounds, the current one, bundle export and import."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from .. import schemas as S
from ..deps import ServiceDep
from ..errors import UnsupportedType
from ..uploads import safe_filename, save_upload
from ..workspace import file_suffix

router = APIRouter(tags=["models"])


@router.get("/models", response_model=S.ModelList, summary="Model rounds and the current one")
def list_models(service: ServiceDep) -> S.ModelList:
    return service.models.list()


@router.put(
    "/models/current",
    response_model=S.ModelList,
    summary="Choose the round used for prediction and warm starts",
)
def set_current(service: ServiceDep, req: S.SetCurrentModel) -> S.ModelList:
    return service.models.set_current(req.round)


@router.get(
    "/models/export",
    summary="A round's teacher+student as a zip bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def export_models(service: ServiceDep, round: Annotated[int | None, Query(ge=1)] = None) -> FileResponse:
    path, name = service.models.export_bundle(round)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=name,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.post(
    "/models/import",
    response_model=S.ModelRound,
    status_code=201,
    summary="Import a bundle from GET /models/export as a new round (the same bundle again: its round)",
)
def import_models(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="zip bundle")],
    make_current: Annotated[bool, Form()] = True,
) -> S.ModelRound:
    filename = safe_filename(file.filename)
    if file_suffix(filename) != ".zip":
        raise UnsupportedType(f"{filename!r}: a model bundle must be a .zip exported by GET /models/export")
    tmp = save_upload(service.ws, file, ".zip", service.max_upload_bytes)
    try:
        return service.models.import_bundle(tmp, filename, make_current)
    finally:
        tmp.unlink(missing_ok=True)
