"""The service's answers as plain dataclasses, for the client (no pydantic: it runs in Slicer's Python).

Each mirrors the pydantic model of the same name in ``reciprocalseg/service/schemas.py``
(``PredictionResult``: ``PredictionInfo``, plus the paths of downloaded files);
tests/client/test_response_types.py checks that their fields, required fields and defaults agree.
Unknown keys in an answer are ignored, so a newer service still talks to an older client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def build(cls: type[T], data: dict[str, Any]) -> T:
    """Instantiate a dataclass from a JSON object, ignoring keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class DeviceInfo:
    type: str
    name: str
    memory_gb: float | None = None
    cpu_count: int | None = None


@dataclass
class ServiceInfo:
    version: str
    workspace: str
    device: DeviceInfo
    counts: dict[str, int]
    n_classes: int
    current_round: int | None
    training_state: str
    max_upload_mb: float
    auth: bool
    n_classes_fixed: bool = False


@dataclass
class CaseInfo:
    id: str
    status: str
    added: str
    geometry: dict[str, Any]
    source: str | None = None
    label_version: int | None = None
    n_label_versions: int = 0
    annotation: str = "none"  # "full", "partial" (some voxels 255 = unannotated) or "none"
    annotated_fraction: float = 0.0
    score: float | None = None
    score_round: int | None = None
    score_current: bool = False
    qa_flags: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelVersion:
    version: int
    kind: str
    time: str
    author: str | None = None
    source: str | None = None
    note: str | None = None
    annotated_fraction: float | None = None  # < 1: a partial label (255 = unannotated)
    warning: str | None = None  # an upload worth a second look (a full label all background)


@dataclass
class LabelHistory:
    case_id: str
    current: int | None
    versions: list[LabelVersion]


@dataclass
class TrainingStatus:
    state: str
    run_id: str | None = None
    round: int | None = None
    current_round: int | None = None
    rounds: int = 0
    preset: str | None = None
    phase: str | None = None
    iteration: int | None = None
    total: int | None = None
    overall_iteration: int | None = None
    overall_total: int | None = None
    losses: dict[str, Any] = field(default_factory=dict)
    h: float | None = None
    lr: float | None = None
    sec_per_iter: float | None = None
    eta_s: float | None = None
    device: str | None = None
    message: str | None = None
    started: str | None = None
    finished: str | None = None
    n_events: int = 0
    n_labeled: int | None = None
    n_unlabeled: int | None = None
    warm_start_round: int | None = None
    warning: str | None = None
    background_only: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None  # an auto round's planned values (None for other presets)
    # Progress in [0, 1]: by time under a budget (the service says); from the iterations when an
    # older service does not send it.
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.fraction is None:
            self.fraction = self._fraction_from_iterations()

    def _fraction_from_iterations(self) -> float | None:
        if self.overall_iteration is not None and self.overall_total:
            return min(1.0, self.overall_iteration / self.overall_total)
        if self.iteration is None or not self.total:
            return None
        return min(1.0, self.iteration / self.total)

    @property
    def active(self) -> bool:
        return self.state == "running"


@dataclass
class TrainingEvents:
    run_id: str | None
    events: list[dict[str, Any]]
    next: int
    total: int


@dataclass
class StructureQA:
    """QA of one class in one network's prediction (see docs/SERVICE.md, "Per-structure QA")."""

    model: str
    label: int
    volume_ml: float
    pieces: int
    disagreement: float | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PredictionResult:
    """A prediction and the model that made it: ``round`` (for a live one, the number the round in
    training will get), ``live``, ``run_id``, ``phase`` and ``iteration`` of the checkpoint."""

    case_id: str
    round: int
    score: float | None  # None: a teacher-only round (no student, nothing to disagree with)
    time: str
    teacher: Path | None = None
    student: Path | None = None
    disagreement: Path | None = None
    teacher_only: bool = False  # a supervised-only round: the teacher's map alone
    note: str | None = None
    teacher_empty: bool | None = None
    student_empty: bool | None = None
    warning: str | None = None
    live: bool = False
    run_id: str | None = None
    phase: str | None = None
    iteration: int | None = None
    qa: list[StructureQA] | None = None
    qa_flags: int | None = None

    @property
    def flagged(self) -> list[StructureQA]:
        """The structures with at least one QA flag."""
        return [r for r in self.qa or [] if r.flags]


@dataclass
class RefinedPrediction:
    """A refine's result (``RefineInfo``): ``name`` (``refined from round N, K strokes``), the
    ``round`` and ``model`` it adapted, the strokes it learnt from, the partial ``label_version``
    that stores them and, once downloaded, the refined label map in ``labels``."""

    case_id: str
    name: str
    round: int
    model: str
    strokes: int
    iterations: int
    seconds: float
    annotated_voxels: int
    label_version: int
    time: str
    file: str
    stopped_by: str | None = None  # "time" (the limit) or "iterations" (the cap on steps)
    stroke_agreement: float | None = None
    time_limit_s: float | None = None
    device: str | None = None
    merged_with: int | None = None
    accepted_version: int | None = None
    labels: Path | None = None


@dataclass
class CaseQA:
    case_id: str
    round: int
    structures: list[StructureQA]
    n_flags: int
    reference: dict[str, Any]
    live: bool = False
    run_id: str | None = None
    iteration: int | None = None


@dataclass
class NextCase:
    case_id: str | None
    score: float | None = None
    round: int | None = None
    n_candidates: int = 0
    n_predicted_now: int = 0
    both_empty: bool = False
    by: str = "disagreement"
    qa_flags: int | None = None
    teacher_only: bool = False  # the current round is supervised-only: ranked by the teacher's QA flags
    note: str | None = None


@dataclass
class ModelRound:
    round: int
    source: str
    created: str
    run_id: str | None = None
    preset: str | None = None
    n_classes: int | None = None
    fewer_classes: bool = False
    n_labeled: int | None = None
    n_unlabeled: int | None = None
    warm_start_round: int | None = None
    current: bool = False
    teacher_only: bool = False  # a supervised-only round: its teacher alone (no student)
    background_only: list[str] | None = None
    teacher_sha256: str | None = None
    student_sha256: str | None = None


@dataclass
class ModelList:
    current: int | None
    rounds: list[ModelRound]

    def __len__(self) -> int:
        return len(self.rounds)


class FolderImport(list):
    """The cases :meth:`Client.add_cases_from_folder` added (it is a list of them), and ``skipped``:
    the case IDs the workspace had already."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []


def prediction_from_json(d: dict[str, Any]) -> PredictionResult:
    if d.get("qa") is not None:
        d = {**d, "qa": [build(StructureQA, r) for r in d["qa"]]}
    return build(PredictionResult, d)
