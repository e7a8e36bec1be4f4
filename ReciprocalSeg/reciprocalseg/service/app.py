"""The FastAPI application, assembled: the service, middleware, error handlers and routers.

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool: slow work (reading
images, predicting) never blocks the event loop, and the workspace lock keeps manifests
consistent. Every error is answered as ``{"detail": "<message>"}`` with a 4xx status (507 for a
full disk), and nothing is stored unless the whole request succeeded.

Where things are: ``core`` (the :class:`Service` object), ``uploads`` (upload and file
handling), ``model_store`` (rounds and bundles), ``middleware`` (Host/Origin/token/size checks),
``error_handlers``, and ``routes/`` (one router per resource).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import reciprocalseg

from . import schemas as S
from .core import Service, ServiceConfig
from .error_handlers import install_error_handlers
from .middleware import GuardMiddleware, upload_routes
from .routes import ROUTERS
from .uploads import safe_filename

__all__ = ["Service", "ServiceConfig", "create_app", "safe_filename"]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 507)
}


def create_app(service: Service, manage_lifecycle: bool = True) -> FastAPI:
    """Build the FastAPI app around a :class:`Service` (which the caller has started)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        if manage_lifecycle:
            import anyio

            await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="ReciprocalSeg service",
        version=reciprocalseg.__version__,
        description="Cases, labels, reciprocal-learning training rounds, teacher/student predictions and "
        "models of one workspace. Send 'Authorization: Bearer <token>' when the service has a token.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = service
    config = service.config
    install_error_handlers(app, service.ws.root)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(  # after the routes: the upload limit goes to the routes that take a file
        GuardMiddleware,
        token=config.token,
        max_body=service.max_upload_bytes + (1 << 20),  # room for the multipart envelope
        upload_limit=service.max_upload_bytes,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
        uploads=upload_routes(route for router in ROUTERS for route in router.routes),  # no prefixes
    )
    return app
