"""Refine one case from strokes: adapt a copy of a round's model to them, then predict the case.

The model file is only read. The case's windows (inference's) go once through the copy's frozen
body (`features.WindowFeatures`); then only its last decoder stage and output convolution (the
"tail") are trained, with the training losses (CE + soft Dice, training/losses.py) over the
painted voxels only, on boxes of the windows around the strokes, mixed with crops of the round's
labelled cases (replay) so that it does not forget what it knew, until the time limit leaves just
enough for the final prediction (or a cap on steps). The prediction runs the adapted tail on the
cached features and blends the windows as inference does. The case is preprocessed exactly as the
model's plan says (data/preprocess.py). Why the tail only: docs/DESIGN.md, "Refine a case from
strokes".
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

# torch.optim's first optimizer imports torch._dynamo: seconds on an idle CPU, 43 s measured on a
# loaded one. Imported with this module, it is paid once when refine is loaded, not inside the
# first refine's time limit.
import torch._dynamo  # noqa: F401

from ..common.device import describe_device
from ..common.errors import CancelledError, DataError, TrainingError
from ..common.file_formats import UNANNOTATED
from ..data.channels import image_channels
from ..data.io import Case
from ..data.preprocess import (
    Preprocessing,
    labels_to_image,
    needs_resampling,
    pad_to_at_least,
    preprocess_image,
    preprocess_label,
    restore_probabilities,
)
from ..data.sampling import CropStream, cache_cases
from ..data.validation import check_image
from ..inference.sliding_window import LoadedModel, load_model
from ..training.losses import supervised_loss
from .features import LastValue, WindowFeatures, autocast, image_key, model_key
from .reach import keep_far_from_strokes
from .settings import RefineSettings, default_refine_settings
from .strokes import check_strokes, count_strokes, stroke_components

# The last case's features and the last replay set, kept for the next refine (refine/features.py).
CASE_FEATURES = LastValue()
REPLAY_FEATURES = LastValue()

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
    # Whether the copy started from the last refine of this case (its strokes only added to).
    continued: bool = False


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

    `image`: the case's scan, a vector image (one component per channel) for a model of several
    channels (data.channels.read_case_image). `replay`: labelled cases (the round's) whose crops
    are mixed in; `cache_dir`: where their preprocessed arrays are kept between refines (e.g. the
    run's own `cache/`, which training filled with the same keys); None: a temporary folder.
    `cancel` is asked before every step (True raises CancelledError; nothing was written). `clock`
    measures the time limit.
    Raises DataError for unusable strokes, image or replay cases, ReciprocalSegError for an
    unreadable model file, TrainingError when the adaptation diverges.
    """
    settings = settings or default_refine_settings(device)
    settings.validate()
    start = clock()
    channels = image_channels(image)  # a case with several images: each checked, named
    for k, channel in enumerate(channels):
        check_image(channel, "image" if len(channels) == 1 else f"image (channel {k})")
    model = load_model(model_file, device)  # refuses NaN/inf weights (inference/model_check.py)
    painted = check_strokes(strokes, image, model.n_classes)
    prep = model.preprocessing
    working = preprocess_label(_on_grid(painted, image), prep)
    if not np.any(working != UNANNOTATED):
        raise DataError(
            "no stroke is left on the model's working grid (the strokes are too thin for its "
            "spacing); paint them a little wider"
        )
    key = model_key(model_file, model.device)
    entry = _case_features(model, key, image, clock)
    windows = entry.windows
    with tempfile.TemporaryDirectory(prefix="refine-") as scratch:
        chosen, replay_set = _replay_set(replay, model, key, settings, Path(cache_dir or scratch))
    reserve = _prediction_reserve(model, entry, image, settings, clock)
    continued = settings.continue_last and _keeps_strokes(entry.strokes, painted) and entry.tail is not None
    if entry.base_labels is None and settings.reach_mm is not None:
        entry.base_labels = _labels(model, windows, image, prep)  # the round's tail, before adapting
    if continued:
        _tail_module(model).load_state_dict(entry.tail)  # type: ignore[arg-type]
    rng = np.random.default_rng([settings.seed, 1])
    job = _Job(model, _stroke_boxes(windows, working), replay_set, settings, rng)
    adapted_at, steps = _adapt(job, start + settings.max_seconds - reserve, clock, cancel)
    labels, agreement = _predict(model, windows, image, prep, painted, settings, entry.base_labels)
    end = clock()
    entry.predict_seconds = end - adapted_at
    entry.strokes = painted
    entry.tail = {k: v.detach().to("cpu", copy=True) for k, v in _tail_module(model).state_dict().items()}
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
        continued=continued,
    )


def _tail_module(model: LoadedModel) -> torch.nn.Module:
    """The adapted part of the copy (VNet.tail's layers), as one module for its state."""
    return torch.nn.ModuleList([model.module.dec1, model.module.head])


def _keeps_strokes(before: np.ndarray | None, now: np.ndarray) -> bool:
    """Whether `now` holds every stroke voxel of `before` with the same value (strokes added only)."""
    if before is None or before.shape != now.shape:
        return False
    painted = before != UNANNOTATED
    return bool(np.array_equal(before[painted], now[painted]))


def _on_grid(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@dataclass
class _Examples:
    """Cached features and their labels for the tail to learn from."""

    features: list[torch.Tensor]  # each (1, n_filters, *box)
    labels: list[torch.Tensor]  # each (1, *box), int64, 255 = not counted


def _stroke_boxes(windows: WindowFeatures, working: np.ndarray) -> _Examples:
    """One box per stroke, cut from the features of the window where the stroke lies deepest
    (its middle farthest from the window's borders, among the windows that hold all of it when
    one does): the stroke's bounding box one voxel wider on each side, so that the tail's 3x3x3
    convolution sees its real neighbours. Per stroke, not per window: strokes spread over a
    window would make one box of nearly all of it, and a step would cost as much as the window."""
    padded, _ = pad_to_at_least(working, windows.patch, value=UNANNOTATED)
    corners, patch = np.asarray(windows.corners), np.asarray(windows.patch)
    device = windows.features.device
    out = _Examples([], [])
    for voxels in stroke_components(padded):
        lo, hi = voxels.min(axis=0), voxels.max(axis=0) + 1
        middle = (lo + hi) / 2
        holds = np.all((corners <= lo) & (corners + patch >= hi), axis=1)
        depth = np.minimum(middle - corners, corners + patch - middle).min(axis=1)
        index = int(np.argmax(np.where(holds, depth, -np.inf) if holds.any() else depth))
        corner = corners[index]
        start, stop = np.maximum(lo - 1, corner), np.minimum(hi + 1, corner + patch)
        local = tuple(slice(int(a), int(b)) for a, b in zip(start - corner, stop - corner, strict=True))
        labels = torch.full([int(n) for n in stop - start], UNANNOTATED, dtype=torch.int64)
        mine = voxels[np.all((voxels >= start) & (voxels < stop), axis=1)] - start
        labels[tuple(torch.from_numpy(mine.T))] = int(padded[tuple(voxels[0])])
        out.features.append(windows.features[index][(slice(None), *local)][None])
        out.labels.append(labels[None].to(device))
    return out


@dataclass
class _CaseEntry:
    """A case's window features, what its preprocessing took, and what its last final
    prediction took (None before the first): the estimates of the next prediction's time."""

    windows: WindowFeatures
    preprocess_seconds: float
    predict_seconds: float | None = None
    # The last refine's strokes (on the scan's grid) and its adapted tail (on the CPU).
    strokes: np.ndarray | None = None
    tail: dict[str, torch.Tensor] | None = None
    # The round's own prediction of the case (scan grid), kept where no stroke reaches.
    base_labels: np.ndarray | None = None


def _case_features(
    model: LoadedModel, key: tuple, image: sitk.Image, clock: Callable[[], float]
) -> _CaseEntry:
    """The case's entry: the last case's, when it is this one again, else computed afresh."""
    case = (key, image_key(image))
    entry = CASE_FEATURES.get(case)
    if entry is None:
        before = clock()
        volume = preprocess_image(image, model.preprocessing)
        entry = _CaseEntry(WindowFeatures.compute(model, volume), clock() - before)
        CASE_FEATURES.put(case, entry)
    return entry  # type: ignore[return-value]


def _replay_set(
    replay: Sequence[Case], model: LoadedModel, key: tuple, settings: RefineSettings, cache_dir: Path
) -> tuple[list[str], _Examples | None]:
    """The replayed cases' ids and `replay_crops` of their crops (augmented, a third class-centred,
    as the training sampler draws them) through the frozen body; None: no replay. The same
    cases and settings give the same crops (their own seed), so the last set is reused."""
    unlabelled = [c.case_id for c in replay if c.label is None]
    if unlabelled:
        raise DataError(f"replay cases need labels; {', '.join(unlabelled[:5])} have none")
    if not replay or settings.replay_batch == 0 or settings.replay_cases == 0:
        return [], None
    which = (key, tuple((c.case_id, str(c.image), str(c.label)) for c in replay), settings.replay_cases)
    which += (settings.replay_crops, settings.seed)
    cached = REPLAY_FEATURES.get(which)
    if cached is not None:
        return cached  # type: ignore[return-value]
    rng = np.random.default_rng([settings.seed, 0])
    picked = sorted(rng.choice(len(replay), min(settings.replay_cases, len(replay)), replace=False))
    cases = [replay[i] for i in picked]
    cached_cases = cache_cases(cases, model.preprocessing, cache_dir, model.n_classes)
    stream = iter(
        CropStream(
            cached_cases, model.patch_zyx, int(rng.integers(1 << 31)), True, class_share=REPLAY_CLASS_SHARE
        )
    )
    crops = [next(stream) for _ in range(settings.replay_crops)]
    images = torch.stack([image for image, _ in crops]).to(model.device)
    with torch.inference_mode(), autocast(model.device):
        features = model.module.features(images.contiguous(memory_format=torch.channels_last_3d))
    examples = _Examples(
        [f[None].clone() for f in features], [label[None].to(model.device) for _, label in crops]
    )
    result = ([c.case_id for c in cases], examples)
    REPLAY_FEATURES.put(which, result)
    return result


def _prediction_reserve(
    model: LoadedModel,
    entry: _CaseEntry,
    image: sitk.Image,
    settings: RefineSettings,
    clock: Callable[[], float],
) -> float:
    """Seconds to keep for the final prediction, times `prediction_margin`: what it took last time
    on this case; the first time, the tail on one batch of windows, timed, times the number of
    batches, plus a resample per class (as long as the preprocessing's) when the model works on
    another grid than the scan's."""
    if entry.predict_seconds is not None:
        return settings.prediction_margin * entry.predict_seconds
    windows = entry.windows
    batch = model.meta.get("inference_batch", 4)
    model.module.eval()
    before = clock()
    with torch.inference_mode(), autocast(model.device):
        model.module.tail(windows.features[:batch])
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    seconds = (clock() - before) * math.ceil(len(windows.corners) / batch)
    if needs_resampling(image, model.preprocessing):
        seconds += model.n_classes * entry.preprocess_seconds
    return settings.prediction_margin * seconds


@dataclass
class _Steps:
    losses: list[float] = field(default_factory=list)
    stopped_by: str = "iterations"


@dataclass
class _Job:
    """What the adaptation steps draw on: the copy, the strokes' boxes and the replay crops."""

    model: LoadedModel
    strokes: _Examples
    replay: _Examples | None
    settings: RefineSettings
    rng: np.random.Generator


def _adapt(
    job: _Job, deadline: float, clock: Callable[[], float], cancel: Callable[[], bool] | None
) -> tuple[float, _Steps]:
    """Train the copy's tail until the next step would pass `deadline` or the cap is reached.

    The network stays in eval mode: batch norm keeps the round's running statistics (a batch of
    boxes around a few strokes would drag them, and the prediction uses them) and dropout is
    off, so each step's loss is computed with the network the prediction will run."""
    module, settings = job.model.module, job.settings
    module.eval()
    optimizer = torch.optim.Adam(_tail_module(job.model).parameters(), lr=settings.lr)
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
        loss = _step(job, optimizer)
        if not math.isfinite(loss):
            raise TrainingError(f"the refine's loss became {loss} at step {done + 1}; try a smaller lr")
        steps.losses.append(loss)
        later = clock()
        spent, now = spent + later - now, later
    return now, steps


def _tail_logits(module: torch.nn.Module, examples: _Examples) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail's logits and the labels of the examples, flattened side by side: (1, C, n), (1, n)."""
    logits = [module.tail(f).flatten(2) for f in examples.features]
    return torch.cat(logits, dim=2), torch.cat([y.flatten(1) for y in examples.labels], dim=1)


def _replay_boxes(replay: _Examples, settings: RefineSettings, rng: np.random.Generator) -> _Examples:
    """`replay_batch` of the replay crops, a random box of half their size from each (a step costs
    an eighth); the box's outer voxels, whose 3x3x3 neighbourhood is cut off, are not counted."""
    picked = rng.choice(len(replay.labels), min(settings.replay_batch, len(replay.labels)), replace=False)
    out = _Examples([], [])
    for i in picked:
        shape = replay.labels[i].shape[1:]
        size = [max(3, n // 2) for n in shape]
        lo = [int(rng.integers(0, n - w + 1)) for n, w in zip(shape, size, strict=True)]
        box = tuple(slice(a, a + w) for a, w in zip(lo, size, strict=True))
        labels = torch.full_like(replay.labels[i][(slice(None), *box)], UNANNOTATED)
        labels[:, 1:-1, 1:-1, 1:-1] = replay.labels[i][(slice(None), *box)][:, 1:-1, 1:-1, 1:-1]
        out.features.append(replay.features[i][(slice(None), slice(None), *box)])
        out.labels.append(labels)
    return out


def refine_loss(
    stroke_logits: torch.Tensor,
    stroke_labels: torch.Tensor,
    replay_logits: torch.Tensor | None = None,
    replay_labels: torch.Tensor | None = None,
    replay_weight: float = 0.0,
) -> torch.Tensor:
    """The training loss (0.5 CE + 0.5 soft Dice, annotated voxels only: 255 counts in neither)
    of the strokes, mixed with the same loss of the replay crops at `replay_weight`.

    Two means, not one over everything: a replay crop's full label has thousands of times the
    voxels of a stroke and would leave the strokes no say."""
    stroke = supervised_loss(stroke_logits, stroke_labels)
    if replay_logits is None:
        return stroke
    return (1 - replay_weight) * stroke + replay_weight * supervised_loss(replay_logits, replay_labels)


def _step(job: _Job, optimizer: torch.optim.Optimizer) -> float:
    module, settings = job.model.module, job.settings
    with autocast(job.model.device):
        stroke_logits, stroke_labels = _tail_logits(module, job.strokes)
        replay_logits = replay_labels = None
        if job.replay is not None:
            replay_logits, replay_labels = _tail_logits(module, _replay_boxes(job.replay, settings, job.rng))
    loss = refine_loss(stroke_logits, stroke_labels, replay_logits, replay_labels, settings.replay_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _labels(
    model: LoadedModel, windows: WindowFeatures, image: sitk.Image, prep: Preprocessing
) -> np.ndarray:
    """The copy's (z, y, x) label map on the scan's grid: its tail on the cached features, windows
    blended as inference blends them."""
    model.module.eval()
    probs = windows.probabilities(model.module.tail, model.meta.get("inference_batch", 4))
    return restore_probabilities(probs, image, prep).argmax(axis=0).astype(np.uint8)


def _predict(
    model: LoadedModel,
    windows: WindowFeatures,
    image: sitk.Image,
    prep: Preprocessing,
    painted: np.ndarray,
    settings: RefineSettings,
    base: np.ndarray | None,
) -> tuple[sitk.Image, float]:
    """The refined map: the adapted copy's labels within `settings.reach_mm` of the strokes and
    the round's (`base`) beyond, the strokes pasted over it when asked; and how far the copy
    itself agreed with the strokes."""
    labels = _labels(model, windows, image, prep)
    stroked = painted != UNANNOTATED
    agreement = float(np.mean(labels[stroked] == painted[stroked]))
    if base is not None:
        spacing_zyx = tuple(float(v) for v in image.GetSpacing()[::-1])
        labels = keep_far_from_strokes(labels, base, stroked, spacing_zyx, settings.reach_mm)
    if settings.paste_strokes:
        labels[stroked] = painted[stroked]
    return labels_to_image(labels, image), agreement
