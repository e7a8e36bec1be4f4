"""What the route modules share: the service of the running app, path parameters, file answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from .core import Service
from .errors import Invalid, NotFound
from .workspace import CASE_ID_PATTERN

NRRD = "application/octet-stream"
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

CaseId = Annotated[str, PathParam(pattern=CASE_ID_PATTERN, max_length=64, description="case ID")]


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def no_empty_case_id(request: Request) -> None:
    """Refuse a form whose ``case_id`` field is present but empty.

    FastAPI reads an empty form field as absent, which would quietly derive the ID from the file
    name when the caller meant to give one (the form is parsed once; this reads the cached copy).
    """
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        if "case_id" in form and not str(form["case_id"]).strip():
            raise Invalid("case_id is empty: give an ID, or leave the field out to use the file name")


def nrrd_response(path: Path, filename: str) -> FileResponse:
    if not path.exists():
        raise NotFound(f"{filename} is missing from the workspace")
    return FileResponse(path, media_type=NRRD, filename=filename)
