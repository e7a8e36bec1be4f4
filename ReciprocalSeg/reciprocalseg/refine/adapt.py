"""Refine one case from strokes: adapt a copy of a round's model to them, then predict the case.

The model file is only read. Its copy in memory is trained with the training losses (CE + soft
Dice, training/losses.py) over the painted voxels only, on crops centred on the strokes, mixed
with crops of the round's labelled cases (replay) so that it does not forget what it knew, until
the time limit leaves just enough for the final sliding-window prediction (or a cap on steps).
The case is preprocessed exactly as the model's plan says (data/preprocess.py) and predicted as
inference does (inference/sliding_window.py). docs/DESIGN.md, "Refine a case from strokes".
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..common.device import describe_device
from ..common.errors import CancelledError, DataError, TrainingError
from ..common.file_formats import UNANNOTATED
from ..data.io import Case
from ..data.preprocess import (
    Preprocessing,
    labels_to_image,
    needs_resampling,
    preprocess_image,
    preprocess_label,
    restore_probabilities,
)
from ..data.sampling import CropStream, cache_cases, random_crop
from ..data.validation import check_image
from ..inference.sliding_window import LoadedModel, load_model, sliding_window_probabilities, window_starts
from ..model.vnet import size_multiple
from ..training.checkpoint import nonfinite_tensors
from ..training.losses import supervised_loss
from .settings import RefineSettings, default_refine_settings
from .strokes import StrokeCentres, check_strokes, count_strokes

# Replay crops centred on a class voxel this often, as the `auto` plan trains (nnU-Net's third).
REPLAY_CLASS_SHARE = 1 / 3


@dataclass
class RefineResult:
    """What a refine made and how: the label map and the figures a person or a benchmark reads."""

    labels: sitk.Image  # uint8 on the image's grid, like inference's predictions
    iterations: int  # adaptation steps taken
    seconds: float  # the whole refine on the given clock, prediction included
    strokes: int  # K, connected pieces of painted voxels per value
    annotated_voxels: int  # painted voxels on the case's grid
    model_meta: dict  # the model file's metadata (classes, plan, patch)
    adapt_seconds: float = 0.0
    predict_seconds: float = 0.0
    stopped_by: str = "iterations"  # "time" (the limit) or "iterations" (the cap)
    replay_cases: list[str] = field(default_factory=list)  # the labelled cases replayed
    losses: list[float] = field(default_factory=list)  # one per step
    # Share of the painted voxels the adapted model itself labels as painted (before any pasting).
    stroke_agreement: float = 0.0
    device: str = "cpu"


def refine_case(
    model_file: Path,
    image: sitk.Image,
    strokes: sitk.Image,
    *,
    replay: Sequence[Case] = (),
    settings: RefineSettings | None = None,
    device: str = "auto",
    cancel: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    cache_dir: Path | None = None,
) -> RefineResult:
    """Adapt a copy of the model in `model_file` to `strokes` painted on `image`; predict the case.

    `replay`: labelled cases (the round's) whose crops are mixed in; `cache_dir`: where their
    preprocessed arrays are kept between refines (e.g. the run's own `cache/`, which training
    filled with the same keys); None: a temporary folder. `cancel` is asked before every step
    (True raises CancelledError; nothing was written). `clock` measures the time limit.
    Raises DataError for unusable strokes, image or replay cases, ReciprocalSegError for an
    unreadable model file, TrainingError when the adaptation diverges.
    """
    settings = settings or default_refine_settings(device)
    settings.validate()
    start = clock()
    check_image(image, "image")
    model = _load_finite(model_file, device)
    painted = check_strokes(strokes, image, model.n_classes)
    prep = model.preprocessing
    volume = preprocess_image(image, prep)
    preprocessed_at = clock()
    working = preprocess_label(_on_grid(painted, image), prep)
    centres = StrokeCentres.from_label(working)
    crop = crop_zyx(model.meta, settings)
    rng = np.random.default_rng(settings.seed)
    with contextlib.ExitStack() as stack:
        if cache_dir is None and replay:
            cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="refine-")))
        chosen, replay_crops = _replay_stream(replay, prep, model.n_classes, crop, settings, cache_dir, rng)
        reserve = _prediction_reserve(model, volume, settings, clock)
        if needs_resampling(image, prep):  # the way back to the scan's grid: a resample per class
            reserve += settings.prediction_margin * model.n_classes * (preprocessed_at - start)
        job = _Job(model, volume, working, centres, replay_crops, crop, settings, rng)
        adapted_at, steps = _adapt(job, start + settings.max_seconds - reserve, clock, cancel)
    labels, agreement = _predict(model, volume, image, prep, painted, settings.paste_strokes)
    end = clock()
    return RefineResult(
        labels=labels,
        iterations=len(steps.losses),
        seconds=end - start,
        strokes=count_strokes(painted),
        annotated_voxels=int(np.count_nonzero(painted != UNANNOTATED)),
        model_meta=dict(model.meta),
        adapt_seconds=adapted_at - start,
        predict_seconds=end - adapted_at,
        stopped_by=steps.stopped_by,
        replay_cases=chosen,
        losses=steps.losses,
        stroke_agreement=agreement,
        device=describe_device(model.device),
    )


def _load_finite(model_file: Path, device: str) -> LoadedModel:
    model = load_model(model_file, device)
    bad = nonfinite_tensors(model.module.state_dict())
    if bad:
        raise DataError(
            f"model file {model_file} has NaN or infinite weights ({bad[0]}...); refine another model"
        )
    return model


def _on_grid(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def crop_zyx(meta: dict, settings: RefineSettings) -> tuple[int, int, int]:
    """The crop (z, y, x): the settings' (rounded up to what the network's strides need) or the
    model's patch size."""
    if settings.crop_size is None:
        x, y, z = meta["patch_size"]
        return (int(z), int(y), int(x))
    multiple = size_multiple(meta.get("strides") or [[2, 2, 2]] * 4)
    x, y, z = settings.crop_size
    return tuple(m * math.ceil(n / m) for n, m in zip((z, y, x), multiple, strict=True))  # type: ignore[return-value]


def _replay_stream(
    replay: Sequence[Case],
    prep: Preprocessing,
    n_classes: int,
    crop: tuple[int, int, int],
    settings: RefineSettings,
    cache_dir: Path | None,
    rng: np.random.Generator,
) -> tuple[list[str], Iterator[tuple[torch.Tensor, torch.Tensor]] | None]:
    """The replayed cases' ids and an endless stream of their crops (None: no replay)."""
    unlabelled = [c.case_id for c in replay if c.label is None]
    if unlabelled:
        raise DataError(f"replay cases need labels; {', '.join(unlabelled[:5])} have none")
    if not replay or settings.replay_batch == 0 or settings.replay_cases == 0:
        return [], None
    picked = sorted(rng.choice(len(replay), min(settings.replay_cases, len(replay)), replace=False))
    cases = [replay[i] for i in picked]
    cached = cache_cases(cases, prep, cache_dir, n_classes)  # type: ignore[arg-type]
    stream = CropStream(
        cached, crop, int(rng.integers(1 << 31)), augment=True, class_share=REPLAY_CLASS_SHARE
    )
    return [c.case_id for c in cases], iter(stream)


def _window_batches(meta: dict, shape: tuple[int, ...]) -> int:
    """How many batches of windows the sliding-window prediction of a `shape` volume runs."""
    x, y, z = meta["patch_size"]
    overlap = meta.get("inference_overlap", 0.5)
    count = 1
    for n, p in zip(shape, (z, y, x), strict=True):
        count *= len(window_starts(max(n, p), p, max(1, round(p * (1 - overlap)))))
    return math.ceil(count / meta.get("inference_batch", 4))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA GPUs that have it, as training and inference use; fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prediction_reserve(
    model: LoadedModel, volume: np.ndarray, settings: RefineSettings, clock: Callable[[], float]
) -> float:
    """Seconds to keep for the final prediction: one batch of windows timed, times their number."""
    batch = model.meta.get("inference_batch", 4)
    z, y, x = model.patch_zyx
    window = np.zeros((batch, 1, z, y, x), np.float32)
    tz, ty, tx = (min(a, b) for a, b in zip(volume.shape, (z, y, x), strict=True))
    window[:, 0, :tz, :ty, :tx] = volume[:tz, :ty, :tx]
    inputs = torch.from_numpy(window).to(model.device).contiguous(memory_format=torch.channels_last_3d)
    model.module.eval()
    before = clock()
    with torch.inference_mode(), _autocast(model.device):
        model.module(inputs)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return settings.prediction_margin * (clock() - before) * _window_batches(model.meta, volume.shape)


@dataclass
class _Steps:
    losses: list[float] = field(default_factory=list)
    stopped_by: str = "iterations"


@dataclass
class _Job:
    """What the adaptation steps draw on: the copy, the case and its strokes on the working grid."""

    model: LoadedModel
    volume: np.ndarray  # the preprocessed scan (z, y, x)
    working: np.ndarray  # the strokes on the same grid
    centres: StrokeCentres
    replay_crops: Iterator[tuple[torch.Tensor, torch.Tensor]] | None
    crop: tuple[int, int, int]
    settings: RefineSettings
    rng: np.random.Generator


def _adapt(
    job: _Job, deadline: float, clock: Callable[[], float], cancel: Callable[[], bool] | None
) -> tuple[float, _Steps]:
    """Train the copy until the next step would pass `deadline` or the cap is reached.

    The network stays in eval mode: batch norm keeps the round's running statistics (a batch of
    three crops around one stroke would drag them, and the prediction uses them) and dropout is
    off, so each step's loss is computed with the network the prediction will run."""
    module, device, settings = job.model.module, job.model.device, job.settings
    module.eval()
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.lr)
    steps = _Steps()
    now, spent = clock(), 0.0
    while len(steps.losses) < settings.max_iterations:
        done = len(steps.losses)
        expected = spent / done if done else 0.0  # the mean step so far (the first, warm-up, included)
        if done >= settings.min_iterations and now + expected > deadline:
            steps.stopped_by = "time"
            break
        if cancel is not None and cancel():
            raise CancelledError(f"refine cancelled after {done} step(s); nothing was changed")
        x, y = _batch(job)
        loss = _step(module, optimizer, x.to(device), y.to(device), settings)
        if not math.isfinite(loss):
            raise TrainingError(f"the refine's loss became {loss} at step {done + 1}; try a smaller lr")
        steps.losses.append(loss)
        later = clock()
        spent, now = spent + later - now, later
    return now, steps


def _batch(job: _Job) -> tuple[torch.Tensor, torch.Tensor]:
    """Stroke crops first (unaugmented: the case is predicted as it is), then replay crops."""
    images, labels = [], []
    for _ in range(job.settings.stroke_batch):
        center = job.centres.draw(job.rng)
        image, label = random_crop(job.volume, job.working, job.crop, job.rng, augment=False, center=center)
        images.append(torch.from_numpy(image)[None])
        labels.append(torch.from_numpy(label.astype(np.int64)))
    if job.replay_crops is not None:
        for _ in range(job.settings.replay_batch):
            image, label = next(job.replay_crops)
            images.append(image)
            labels.append(label)
    x = torch.stack(images).contiguous(memory_format=torch.channels_last_3d)
    return x, torch.stack(labels)


def refine_loss(
    logits: torch.Tensor, labels: torch.Tensor, n_stroke: int, replay_weight: float
) -> torch.Tensor:
    """The training loss (0.5 CE + 0.5 soft Dice, annotated voxels only) of the first `n_stroke`
    crops, mixed with the same loss of the replay crops after them at `replay_weight`.

    Two means, not one over the whole batch: a replay crop's full label has thousands of times
    the voxels of a stroke and would leave the strokes no say."""
    stroke = supervised_loss(logits[:n_stroke], labels[:n_stroke])
    if n_stroke == logits.shape[0]:
        return stroke
    replay = supervised_loss(logits[n_stroke:], labels[n_stroke:])
    return (1 - replay_weight) * stroke + replay_weight * replay


def _step(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: RefineSettings,
) -> float:
    with _autocast(x.device):
        logits = module(x)
    loss = refine_loss(logits, y, settings.stroke_batch, settings.replay_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _predict(
    model: LoadedModel,
    volume: np.ndarray,
    image: sitk.Image,
    prep: Preprocessing,
    painted: np.ndarray,
    paste: bool,
) -> tuple[sitk.Image, float]:
    """The adapted copy's label map on the scan's grid (as inference.predict_image, on the volume
    already preprocessed), the strokes pasted over it when asked; and how far it agreed with them."""
    model.module.eval()
    probs = sliding_window_probabilities(model, volume)
    labels = restore_probabilities(probs, image, prep).argmax(axis=0).astype(np.uint8)
    stroked = painted != UNANNOTATED
    agreement = float(np.mean(labels[stroked] == painted[stroked]))
    if paste:
        labels[stroked] = painted[stroked]
    return labels_to_image(labels, image), agreement
