"""HTTP routes, one router per resource (FastAPI's "bigger applications" layout)."""

from . import cases, info, labels, models, plan, prediction, refine, settings, training

ROUTERS = (
    info.router,
    settings.router,
    cases.router,
    labels.router,
    prediction.router,
    refine.router,
    plan.router,
    training.router,
    models.router,
)
