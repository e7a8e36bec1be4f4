"""The light client of the ReciprocalSeg service: talk to it, and start or find a local one.

>>> from reciprocalseg.client import Client, LocalService
>>> c = Client(workspace="~/rs-workspace")       # URL and token from WORKSPACE/.service/
>>> svc = LocalService("~/rs-workspace"); url, token = svc.start(); c = svc.client()

- ``client.py``: :class:`Client` (``requests``), :class:`ServiceError`;
- ``responses.py``: the answers as dataclasses (checked against the service's pydantic schemas by
  tests/client/test_response_types.py);
- ``local_service.py``: :class:`LocalService`, starting, finding and stopping a service for a
  workspace as a child process.

Standard library and ``requests`` only: the package runs in 3D Slicer's process (the
ReciprocalSeg module's Lib), which must not load SimpleITK, pydantic, starlette, fastapi or torch
(tests/client/test_light_imports.py checks it).
"""

from .client import Client, ServiceError
from .local_service import LaunchError, LiveService, LocalService, find_live_service, service_python
from .responses import (
    CaseInfo,
    CaseQA,
    DeviceInfo,
    FolderImport,
    LabelHistory,
    LabelVersion,
    ModelList,
    ModelRound,
    NextCase,
    PredictionResult,
    RefinedPrediction,
    ServiceInfo,
    StructureQA,
    TrainingEvents,
    TrainingStatus,
)

__all__ = [
    "CaseInfo",
    "CaseQA",
    "Client",
    "DeviceInfo",
    "FolderImport",
    "LabelHistory",
    "LabelVersion",
    "LaunchError",
    "LiveService",
    "LocalService",
    "ModelList",
    "ModelRound",
    "NextCase",
    "PredictionResult",
    "RefinedPrediction",
    "ServiceError",
    "ServiceInfo",
    "StructureQA",
    "TrainingEvents",
    "TrainingStatus",
    "find_live_service",
    "service_python",
]
