"""How errors become answers: every one is ``{"detail": "<message for the user>"}``.

A full disk is 507 with a plain message (never the ITK/OS text, which carries build paths);
other I/O errors and surprises are 500 with the exception type only, and the log keeps the rest.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reciprocalseg.common.errors import DataError

from .errors import ApiError

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full_message(workspace: Path) -> str:
    return f"no space left for the workspace {workspace}: free some disk space and retry (nothing was stored)"


def install_error_handlers(app: FastAPI, workspace: Path) -> None:
    """Register the handlers that turn exceptions into JSON answers."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse({"detail": format_validation(exc), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in DISK_FULL_ERRNOS:
            log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": disk_full_message(workspace)}, status_code=507)
        log.exception("I/O error on %s %s", request.method, request.url.path)
        reason = exc.strerror or type(exc).__name__
        return JSONResponse(
            {"detail": f"I/O error in the workspace: {reason} (see the service log)"}, status_code=500
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the service log"}, status_code=500
        )


def format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        if loc.endswith(("case_id", "run_id")) and err.get("type") == "string_pattern_mismatch":
            parts.append(
                f"{loc}: invalid ID {err.get('input')!r}; use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
            continue
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)
