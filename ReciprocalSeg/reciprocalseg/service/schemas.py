"""Pydantic (v2) models of the service's requests and responses; they make up /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .workspace import CASE_ID_PATTERN, MAX_CLASSES

# A channel's name (T2, ADC, CT, PET, T1c ...): shown in Slicer and written in model files.
CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _+.-]{0,31}$"
MAX_CHANNELS = 16  # as data.io.MAX_CHANNELS (the schemas do not import the data layer)

CaseStatus = Literal["unlabelled", "labelled", "predicted"]
TrainingState = Literal["idle", "running", "completed", "failed", "cancelled", "interrupted"]


class Message(BaseModel):
    """A plain answer to a request that has no other result."""

    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is a message meant for the user."""

    detail: str
    errors: list[dict[str, Any]] | None = None


class Geometry(BaseModel):
    size: list[int] = Field(description="voxels (x, y, z)")
    spacing: list[float] = Field(description="mm (x, y, z), 9 significant digits")
    origin: list[float] = Field(description="LPS mm, 9 significant digits")
    direction: list[float] = Field(description="9 direction cosines, row-major (LPS), 9 significant digits")
    pixel_type: str | None = None

    @field_validator("spacing", "origin", "direction")
    @classmethod
    def _readable(cls, values: list[float]) -> list[float]:
        # Header round trips leave 9.999999999999998 for 10; nine digits keep far below a micrometre.
        return [float(f"{v:.9g}") for v in values]


class LabelVersion(BaseModel):
    version: int
    kind: Literal["submitted", "draft"]
    author: str | None = None
    time: str
    source: str | None = None
    note: str | None = None
    annotated_fraction: float | None = Field(
        None, description="share of voxels annotated (< 1: a partial label, 255 = unannotated); None: unknown"
    )
    warning: str | None = Field(
        None, description="in the answer to an upload worth a second look (a full label all background)"
    )


class CaseInfo(BaseModel):
    id: str
    status: CaseStatus = Field(description="labelled: has a submitted label; predicted: has a prediction")
    added: str
    source: str | None = None
    geometry: Geometry
    label_version: int | None = Field(None, description="current (latest submitted) label version")
    n_label_versions: int = 0
    annotation: Literal["full", "partial", "none"] = Field(
        "none",
        description="the current label: full, partial (some voxels 255 = unannotated) or none (no label)",
    )
    annotated_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of the case's voxels the current label annotates"
    )
    score: float | None = Field(None, description="teacher/student disagreement of the latest prediction")
    score_round: int | None = Field(None, description="model round of that prediction")
    score_current: bool = Field(False, description="whether the score comes from the current round")
    qa_flags: int | None = Field(
        None, description="QA flags of that prediction (both networks, against the labelled cases now)"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    channels: list[str] = Field(
        default_factory=list, description="channel names, in order, of a case with several images; [] for one"
    )


class CaseList(BaseModel):
    cases: list[CaseInfo]


class RegisterCase(BaseModel):
    """Add a case from a file or DICOM folder that is already on the server's disk."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096, description="absolute path on the server")
    case_id: str | None = Field(None, pattern=CASE_ID_PATTERN, description="default: from the file name")
    channels: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=15,
        description="further channels of the case (absolute paths), in order after `path`",
    )
    channel_names: list[Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN)]] | None = Field(
        None, max_length=16, description="names of the channels, in order (default: the workspace's)"
    )
    resample_channels: Literal["linear", "nearest", "bspline"] | None = Field(
        None, description="resample channels off channel 0's grid with this interpolation (default: refuse)"
    )


class LabelHistory(BaseModel):
    case_id: str
    current: int | None
    versions: list[LabelVersion]


class TrainingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        "auto",
        max_length=32,
        description="auto (default: planned from the cases, see GET /plan), demo, lite, paper or improved",
    )
    minutes: float | None = Field(
        None,
        gt=0,
        le=24 * 60,
        allow_inf_nan=False,
        description="time budget: phases sized from measured speed (instead of iterations)",
    )
    iterations: int | None = Field(None, ge=0, le=1_000_000, description="reciprocal-phase iterations")
    supervised_iterations: int | None = Field(
        None, ge=0, le=1_000_000, description="supervised-phase iterations"
    )
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="default: the service's device")
    warm_start: bool = Field(True, description="start from the current round's models (False: from scratch)")
    checkpoint_every: int | None = Field(None, ge=1, le=1_000_000, description="default: the preset's")

    @model_validator(mode="after")
    def _something_to_train(self) -> TrainingRequest:
        problem = round_problem(self.preset, self.supervised_iterations, self.iterations, self.minutes)
        if problem is not None:
            raise ValueError(problem)
        return self


def round_problem(
    preset: str, supervised: int | None, reciprocal: int | None, minutes: float | None
) -> str | None:
    """Why a round with these settings would fail in the worker (a 202 followed by a failed run),
    or None. Unknown presets are left to the training manager's message."""
    import dataclasses

    from reciprocalseg.common.errors import ReciprocalSegError
    from reciprocalseg.config import PRESETS, make_config

    if preset not in PRESETS:
        return None
    config = make_config(preset)
    overrides = {"supervised_iterations": supervised, "reciprocal_iterations": reciprocal, "minutes": minutes}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    runs = [
        n > 0 and (minutes is None or share > 0)
        for n, share in zip(
            (config.supervised_iterations, config.reciprocal_iterations, config.finetune_iterations),
            config.budget_split,
            strict=True,
        )
    ]
    if not any(runs):
        return (
            "nothing to train: supervised_iterations and iterations are both 0"
            + (" (a time budget sizes only the phases that have iterations)" if minutes else "")
            + "; give one of them > 0 (iterations=0 alone is a supervised-only round)"
        )
    try:
        config.validate()
    except ReciprocalSegError as exc:
        return str(exc)
    return None


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TrainingStatus(BaseModel):
    state: TrainingState
    run_id: str | None = None
    round: int | None = Field(None, description="the model round this run produced (when completed)")
    current_round: int | None = None
    rounds: int = 0
    preset: str | None = None
    phase: str | None = None
    iteration: int | None = Field(None, description="iteration within the phase")
    total: int | None = Field(None, description="iterations of the phase")
    overall_iteration: int | None = Field(None, description="iteration over both phases")
    overall_total: int | None = None
    losses: dict[str, Any] = Field(default_factory=dict)
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
    warning: str | None = Field(None, description="the latest warning event of the run")
    background_only: list[str] = Field(
        default_factory=list, description="networks of the round that predict background everywhere"
    )
    plan: dict[str, Any] | None = Field(
        None,
        description="an auto round's planned values as it trains them (RUN/plan.json's values with "
        "its overrides applied); null for the other presets",
    )
    fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description="how far the run is, in [0, 1]: under a time budget the share of the budget's time "
        "spent, else the share of its iterations done",
    )


class PlanInfo(BaseModel):
    """The ``auto`` plan of the next round (``Plan.to_dict()``)."""

    format: str
    device: str = Field(description="the device it was planned for")
    values: dict[str, Any] = Field(description="TrainConfig fields")
    overrides: dict[str, Any] = Field(description="fields set over the plan (the workspace's n_classes)")
    reasons: dict[str, str] = Field(description="why each value was chosen")
    fingerprint: dict[str, Any] = Field(description="the cases' fingerprint it was made from")


class TrainingEvents(BaseModel):
    run_id: str | None
    events: list[dict[str, Any]]
    next: int = Field(description="pass as ?since= to get the events after these")
    total: int


class StructureQA(BaseModel):
    """QA of one class (structure) in one network's prediction of a case."""

    model: Literal["teacher", "student"]
    label: int = Field(description="the class value (1..n_classes-1)")
    volume_ml: float = Field(description="voxel count x voxel volume (the scan's spacing), in mL")
    pieces: int = Field(description="connected components (26-neighbourhood)")
    disagreement: float | None = Field(
        None, description="1 - Jaccard of teacher and student for this class (0 when neither finds it)"
    )
    flags: list[str] = Field(
        default_factory=list,
        description="empty, volume_low, volume_high, more_pieces (vs the labelled cases), high_disagreement",
    )
    notes: list[str] = Field(default_factory=list, description="the flags in words")


class ClassRange(BaseModel):
    volume_ml_min: float
    volume_ml_max: float
    pieces_max: int
    present_in: int = Field(description="how many reference cases have the class at all")


class QAReference(BaseModel):
    """What the labelled cases show: the ranges the flags compare with."""

    cases: int = Field(description="fully labelled cases measured")
    margin: float = Field(description="volume flags allow [min, max] widened by this fraction")
    partial_skipped: int = Field(0, description="partially annotated labels left out")
    classes: dict[str, ClassRange]


class PredictionInfo(BaseModel):
    case_id: str
    round: int = Field(
        description="the model round; for a live prediction, the number the training round will get"
    )
    live: bool = Field(False, description="made by the latest checkpoint of a round still training")
    run_id: str | None = Field(None, description="the training run of the model")
    phase: str | None = Field(None, description="live: the checkpoint's phase (supervised, reciprocal...)")
    iteration: int | None = Field(None, description="live: the checkpoint's iteration within its phase")
    score: float | None = Field(
        description="mean teacher/student disagreement (higher = more disagreement); null for a "
        "teacher-only round"
    )
    time: str
    files: dict[str, str] = Field(
        description="teacher, student, disagreement: GET /cases/{id}/prediction/{kind} (teacher only "
        "for a teacher-only round)"
    )
    teacher_only: bool = Field(
        False, description="made by a supervised-only round: the teacher's map alone (no student)"
    )
    note: str | None = Field(None, description="set for a teacher-only round's prediction: says so")
    teacher_empty: bool | None = Field(None, description="the teacher predicts background everywhere")
    student_empty: bool | None = Field(None, description="the student predicts background everywhere")
    warning: str | None = Field(None, description="set when a network predicts background everywhere")
    qa: list[StructureQA] | None = Field(
        None, description="per class and network; flagged against the current labels (null: made before QA)"
    )
    qa_flags: int | None = Field(None, description="number of flags over all structures of both networks")


class CaseQA(BaseModel):
    """Per-structure QA of a case's prediction, flagged against the labelled cases now."""

    case_id: str
    round: int
    live: bool = False
    run_id: str | None = None
    iteration: int | None = None
    structures: list[StructureQA]
    n_flags: int
    reference: QAReference


class NextCase(BaseModel):
    case_id: str | None = Field(description="None when every case is labelled")
    score: float | None = None
    both_empty: bool = Field(
        False, description="neither network finds anything in it: ranked as the most uncertain case"
    )
    round: int | None = None
    n_candidates: int = 0
    n_predicted_now: int = Field(0, description="unlabelled cases predicted to answer this request")
    by: Literal["disagreement", "qa"] = Field("disagreement", description="the ranking used")
    qa_flags: int | None = Field(None, description="by=qa: the chosen case's QA flags")
    teacher_only: bool = Field(
        False, description="the current round is supervised-only (no student): ranked by QA flags"
    )
    note: str | None = Field(None, description="why the ranking is not the one asked for")


class ModelRound(BaseModel):
    round: int
    source: Literal["trained", "imported"]
    created: str
    run_id: str | None = None
    preset: str | None = None
    n_classes: int | None = Field(None, description="classes including background")
    fewer_classes: bool = Field(
        False, description="trained before a label with a new class arrived: segments fewer classes"
    )
    n_labeled: int | None = None
    n_unlabeled: int | None = None
    warm_start_round: int | None = None
    current: bool = False
    teacher_only: bool = Field(
        False,
        description="a supervised-only round: its teacher alone is a model (the student never trained)",
    )
    background_only: list[str] | None = Field(
        None, description="networks that predict background everywhere on labelled scans"
    )
    teacher_sha256: str | None = None
    student_sha256: str | None = None


class Settings(BaseModel):
    n_classes: int = Field(
        description="classes including background (as train --n-classes); labels 0..n_classes-1"
    )
    n_classes_fixed: bool = Field(description="False: the count grows when a label with a new class arrives")
    retrain_after: int | None = Field(
        None, description="retrain by itself after this many corrections (null: off)"
    )
    retrain_minutes: float = Field(10.0, description="time budget of a round started by itself")
    corrections: int = Field(
        0,
        description="submitted label versions (labels, scribbles, refines, accepts) since the latest "
        "round started",
    )
    retrain_message: str | None = Field(
        None, description="what retraining by itself did last, or why it waits"
    )


class SettingsUpdate(BaseModel):
    """Only the fields given change; ``{"n_classes": null}`` lets the count follow the labels again."""

    model_config = ConfigDict(extra="forbid")

    n_classes: int | None = Field(
        None,
        ge=2,
        le=MAX_CLASSES,
        description="classes including background; null: follow the labels (255 marks unannotated "
        "voxels, so classes are 0..254 at most)",
    )
    retrain_after: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="retrain by itself (a warm-started round) once this many corrections arrived; null: off",
    )
    retrain_minutes: float | None = Field(
        None,
        gt=0,
        le=24 * 60,
        allow_inf_nan=False,
        description="time budget of such a round (default 10)",
    )


class ModelList(BaseModel):
    current: int | None
    rounds: list[ModelRound]


class SetCurrentModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1)


class DeviceInfo(BaseModel):
    type: Literal["cuda", "cpu"]
    name: str
    memory_gb: float | None = None
    cpu_count: int | None = None


class Counts(BaseModel):
    cases: int
    labelled: int
    unlabelled: int
    predicted: int
    rounds: int
    corrupt: int


class ServiceInfo(BaseModel):
    version: str
    workspace: str
    device: DeviceInfo
    counts: Counts
    n_classes: int = Field(
        description="classes including background (as train --n-classes); labels 0..n_classes-1"
    )
    n_classes_fixed: bool = Field(
        False, description="False: the count grows when a label with a new class arrives"
    )
    current_round: int | None
    training_state: str
    max_upload_mb: float
    auth: bool


class RefineInfo(BaseModel):
    """A refined prediction: a copy of a round's network adapted to the case's strokes."""

    case_id: str
    name: str = Field(description="what made it, e.g. 'refined from round 3, 2 strokes'")
    round: int = Field(description="the round whose network was copied and adapted")
    model: Literal["student", "teacher"] = Field(description="which of the round's networks")
    strokes: int = Field(description="strokes (connected pieces of annotated voxels) it learnt from")
    iterations: int = Field(description="adaptation steps taken")
    seconds: float = Field(description="time the refine took")
    annotated_voxels: int = Field(description="voxels the accumulated strokes annotate")
    stopped_by: str | None = Field(None, description="what ended the adaptation: time or iterations")
    stroke_agreement: float | None = Field(
        None, description="share of the stroke voxels the adapted copy itself labels as painted"
    )
    time_limit_s: float | None = Field(None, description="the limit asked for (null: the default)")
    device: str | None = None
    label_version: int = Field(description="the partial label version that stores the accumulated strokes")
    merged_with: int | None = Field(
        None, description="the earlier partial label version the strokes were painted over (null: none)"
    )
    time: str
    file: str = Field(description="GET /cases/{id}/refined/labels")
    accepted_version: int | None = Field(
        None, description="the full label version it became (POST /cases/{id}/refined/accept)"
    )


class RefineStatus(BaseModel):
    """The refine in progress (one at a time)."""

    running: bool
    case_id: str | None = None
    model: str | None = None
    started: str | None = None
    elapsed_s: float | None = None
    time_limit_s: float | None = None
