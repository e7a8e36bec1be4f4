"""``/training``: start, watch, stop and resume training rounds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from .. import schemas as S
from ..deps import RUN_ID_PATTERN, ServiceDep

router = APIRouter(tags=["training"])
RunId = Annotated[str | None, Query(pattern=RUN_ID_PATTERN)]


@router.post(
    "/training",
    response_model=S.TrainingStatus,
    status_code=202,
    summary="Start a training round on the submitted labels (409 while one runs)",
)
def start_training(service: ServiceDep, req: S.TrainingRequest) -> S.TrainingStatus:
    job = service.jobs.start(
        preset=req.preset,
        iterations=req.iterations,
        supervised_iterations=req.supervised_iterations,
        minutes=req.minutes,
        device=req.device,
        warm_start=req.warm_start,
        checkpoint_every=req.checkpoint_every,
    )
    return S.TrainingStatus(**service.jobs.status(job["run_id"]))


@router.get(
    "/training", response_model=S.TrainingStatus, summary="State and progress of the active (or latest) run"
)
def training_status(service: ServiceDep, run_id: RunId = None) -> S.TrainingStatus:
    return S.TrainingStatus(**service.jobs.status(run_id))


@router.get(
    "/training/events", response_model=S.TrainingEvents, summary="Progress events of a run from index `since`"
)
def training_events(
    service: ServiceDep,
    since: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    run_id: RunId = None,
) -> S.TrainingEvents:
    return S.TrainingEvents(**service.jobs.events(since=since, run_id=run_id, limit=limit))


@router.post(
    "/training/stop",
    response_model=S.TrainingStatus,
    summary="Stop the active run (it writes a checkpoint; resume continues it)",
)
def stop_training(service: ServiceDep) -> S.TrainingStatus:
    job = service.jobs.stop()
    return S.TrainingStatus(**service.jobs.status(job["run_id"]))


@router.post(
    "/training/resume",
    response_model=S.TrainingStatus,
    status_code=202,
    summary="Resume a cancelled, interrupted or failed run from its last checkpoint",
)
def resume_training(service: ServiceDep, req: S.ResumeRequest | None = None) -> S.TrainingStatus:
    job = service.jobs.resume(req.run_id if req else None)
    return S.TrainingStatus(**service.jobs.status(job["run_id"]))
