"""How errors become answers: every one is ``{"detail": "<message for the user>"}``.

A full disk is 507 with a plain message (never the ITK/OS text, which carries build paths);
other I/O errors and surprises are 500 with the exception type only, and the log keeps the rest.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reciprocalseg.common.display import EXCERPT_CHARS, excerpt
from reciprocalseg.common.errors import DataError

from .errors import ApiError
from .service_log import log_path
from .workspace import CASE_ID_RULES

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
MAX_ERRORS = 10  # validation errors listed in an answer (a list of a million bad items has as many)


def disk_full_message(workspace: Path) -> str:
    return f"no space left for the workspace {workspace}: free some disk space and retry (nothing was stored)"


def _in_workspace(filename: object, workspace: Path) -> bool:
    if not isinstance(filename, str | Path):
        return True  # no file named: the service only writes into its workspace
    return Path(filename).resolve().is_relative_to(workspace.resolve())


def not_writable_message(workspace: Path, exc: OSError) -> str:
    where = Path(exc.filename).name if exc.filename else "a file"
    return (
        f"the service cannot write its workspace {workspace} ({where}: {exc.strerror or 'not writable'}): "
        "the folder is read-only or belongs to another user; make it writable for the user running the "
        "service, or restart the service on a writable workspace (nothing was stored)"
    )


def install_error_handlers(app: FastAPI, workspace: Path) -> None:
    """Register the handlers that turn exceptions into JSON answers."""
    log_file = log_path(workspace)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [public_error(err) for err in exc.errors()[:MAX_ERRORS]]
        return JSONResponse({"detail": format_validation(exc), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in DISK_FULL_ERRNOS:
            log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": disk_full_message(workspace)}, status_code=507)
        if exc.errno in NOT_WRITABLE_ERRNOS and _in_workspace(exc.filename, workspace):
            # A server-side storage problem, not the request's content.
            log.error("workspace not writable on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": not_writable_message(workspace, exc)}, status_code=507)
        log.exception("I/O error on %s %s", request.method, request.url.path)
        reason = exc.strerror or type(exc).__name__
        return JSONResponse(
            {"detail": f"I/O error in the workspace: {reason}; details are in the service log {log_file}"},
            status_code=500,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); details are in the service log {log_file}"},
            status_code=500,
        )


def public_error(err: dict[str, Any]) -> dict[str, Any]:
    """A validation error as the answer shows it: where, what, and at most an excerpt of the input.

    The input itself is never echoed whole (a 20 MB body would come back as a 20 MB answer), and
    every value is made JSON-safe (a NaN the client sent is not valid JSON to send back).
    """
    out: dict[str, Any] = {
        "type": str(err.get("type", "")),
        "loc": [x if isinstance(x, int) else excerpt(x)[1:-1] for x in err.get("loc", ())],
        "msg": str(err.get("msg", "invalid"))[: EXCERPT_CHARS * 4],
    }
    if "input" in err:
        out["input_excerpt"] = excerpt(err["input"])
    return out


def format_validation(exc: RequestValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:MAX_ERRORS]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        loc = excerpt(loc)[1:-1]
        if loc.endswith(("case_id", "run_id")) and err.get("type") == "string_pattern_mismatch":
            parts.append(f"{loc}: invalid ID {excerpt(err.get('input'))}; {CASE_ID_RULES}")
            continue
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg[: EXCERPT_CHARS * 4]}")
    more = f"; and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
    return "invalid request: " + "; ".join(parts) + more
