"""Sliding-window prediction on whole scans, and teacher-student disagreement.

Windows are cut from the scan held on the compute device, run through the network in
batches (bf16 autocast on CUDA), weighted (Gaussian by default, so window borders count
less) and accumulated. `paper_stride=True` reproduces the published evaluation instead:
stride (x, y, z) = (18, 18, 4), uniform weights, one window at a time, fp32.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..common.device import resolve_device
from ..data.preprocess import (
    Preprocessing,
    labels_to_image,
    pad_to_at_least,
    preprocess_image,
    restore_probabilities,
)
from ..training.checkpoint import load_model_file
from .model_check import build_network, check_inference_meta
from .postprocess import largest_connected_component

PAPER_STRIDE_XYZ = (18, 18, 4)


@dataclass
class LoadedModel:
    """A network in eval mode plus what is needed to apply it (from the model file's metadata)."""

    module: torch.nn.Module
    meta: dict
    device: torch.device
    path: Path | None = None

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])

    @property
    def patch_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.meta["patch_size"]
        return (z, y, x)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.meta["preprocessing"])


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Load `teacher.pt`, `student.pt` or `supervised.pt` (any ReciprocalSeg model file).

    Refused with a ``ReciprocalSegError`` naming the file: weights that do not fit the network its
    description builds, NaN or infinite weights (such a model predicts nothing), or a description
    prediction cannot use (model_check).
    """
    data = load_model_file(Path(path))
    meta = data["meta"]
    source = f"model file {path}"
    check_inference_meta(meta, source)
    module = build_network(meta, data["state_dict"], source)
    # Channels-last weights: the layout cuDNN's bf16 tensor-core and oneDNN's CPU convolutions want.
    module.to(resolve_device(device), memory_format=torch.channels_last_3d).eval()
    return LoadedModel(module, meta, resolve_device(device), Path(path))


def from_module(module: torch.nn.Module, meta: dict) -> LoadedModel:
    """Wrap a network being trained (benchmarks evaluate without writing a file)."""
    device = next(module.parameters()).device
    return LoadedModel(module, meta, device)


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Start offsets covering [0, size) with windows of `patch`, the last one flush with the end."""
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def gaussian_weights(patch_zyx: tuple[int, int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian importance map (sigma = patch/8), peak 1, strictly positive."""
    axes = []
    for n in patch_zyx:
        centre, sigma = (n - 1) / 2, n * sigma_scale
        axes.append(torch.exp(-0.5 * ((torch.arange(n) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return weights.clamp_min(float(weights[weights > 0].min()))


@functools.lru_cache(maxsize=8)
def _window_weights(patch_zyx: tuple[int, int, int], weighting: str) -> torch.Tensor:
    """Cached (read-only) window weights: the Gaussian map of a 112x112x80 patch takes
    milliseconds to build, as long as the whole fast inference of a small scan on a GPU."""
    return gaussian_weights(patch_zyx) if weighting == "gaussian" else torch.ones(patch_zyx)


@functools.lru_cache(maxsize=8)
def _on(weights: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A cached copy of the (cached, never modified) `weights` on `device`."""
    return weights.to(device)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def sliding_window_probabilities(
    model: LoadedModel,
    volume: np.ndarray,
    overlap: float | None = None,
    weighting: str | None = None,
    batch_size: int | None = None,
    paper_stride: bool = False,
    mixed_precision: bool = True,
    streaming: bool | None = None,
) -> np.ndarray:
    """Class probabilities (C, z, y, x) for a preprocessed (z, y, x) volume.

    `streaming`: None decides by itself: the scan and the probabilities stay on the GPU
    when they fit in its free memory, else (or on running out of memory) they are
    accumulated in host memory while only the windows visit the GPU. Both give the same
    numbers.
    """
    meta = model.meta
    overlap = meta.get("inference_overlap", 0.5) if overlap is None else overlap
    weighting = meta.get("inference_weighting", "gaussian") if weighting is None else weighting
    batch_size = meta.get("inference_batch", 4) if batch_size is None else batch_size
    patch = model.patch_zyx
    if paper_stride:
        x, y, z = PAPER_STRIDE_XYZ
        # min(): with patches smaller than the paper's stride, windows must still tile the scan.
        steps = tuple(min(s, p) for s, p in zip((z, y, x), patch, strict=True))
        weighting, batch_size, mixed_precision = "uniform", 1, False
    else:
        steps = tuple(max(1, round(p * (1 - overlap))) for p in patch)

    padded, undo = pad_to_at_least(volume.astype(np.float32, copy=False), patch)
    image = torch.from_numpy(np.ascontiguousarray(padded))
    shape = tuple(image.shape)
    weight = _window_weights(patch, weighting)
    corners = [
        (z0, y0, x0)
        for z0 in window_starts(shape[0], patch[0], steps[0])
        for y0 in window_starts(shape[1], patch[1], steps[1])
        for x0 in window_starts(shape[2], patch[2], steps[2])
    ]
    model.module.eval()
    windows = _Windows(model, patch, weight, corners, batch_size, mixed_precision)
    if streaming is None:
        streaming = not _fits_on_device(model.device, model.n_classes, shape)
    if not streaming:
        try:
            probs = windows.accumulate(image, on_device=True)
        except torch.OutOfMemoryError:
            streaming = True  # handled below, once this frame's device tensors are released
    if streaming:
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        probs = windows.accumulate(image, on_device=False)
    return probs[(slice(None), *undo)].cpu().numpy()


# The scan, its probabilities and the weight sums stay on the GPU when they take less than this
# share of its free memory; the network's activations for a batch of windows need the rest.
DEVICE_ACCUMULATION_FRACTION = 0.5


def _fits_on_device(device: torch.device, n_classes: int, shape: tuple[int, ...]) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    need = (n_classes + 2) * math.prod(shape) * 4  # fp32 probabilities + weight sums + scan
    return need < DEVICE_ACCUMULATION_FRACTION * free


@dataclass
class _Windows:
    """Runs batches of windows through the network and sums their weighted probabilities."""

    model: LoadedModel
    patch: tuple[int, int, int]
    weight: torch.Tensor  # (D, H, W) on the CPU
    corners: list[tuple[int, int, int]]
    batch_size: int
    mixed_precision: bool

    def accumulate(self, image: torch.Tensor, on_device: bool) -> torch.Tensor:
        """Weighted mean probabilities (C, z, y, x) of the host tensor `image` (z, y, x).

        on_device: the scan and the sums live on the model's device. Otherwise (streaming)
        they stay in host memory; each batch of windows goes to the device through a pinned
        buffer and its weighted probabilities come back through another. The arithmetic is
        the same elementwise fp32 in both, so the results are identical.
        """
        device, patch = self.model.device, self.patch
        home = device if on_device else torch.device("cpu")
        pin = not on_device and device.type == "cuda"
        image = image.to(home)
        weight_device, weight_home = _on(self.weight, device), _on(self.weight, home)
        probs = torch.zeros((self.model.n_classes, *image.shape), dtype=torch.float32, device=home)
        counts = torch.zeros(image.shape, dtype=torch.float32, device=home)
        # The fast path feeds channels-last windows (cuDNN bf16 tensor cores, oneDNN on the CPU); the
        # paper mode (fp32, mixed_precision off) stays as published.
        channels_last = self.mixed_precision
        for i in range(0, len(self.corners), self.batch_size):
            batch = self.corners[i : i + self.batch_size]
            crops = torch.stack(
                [image[z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in batch]
            )
            crops = (crops.pin_memory() if pin else crops).to(device, non_blocking=pin)[:, None]
            if channels_last:
                crops = crops.contiguous(memory_format=torch.channels_last_3d)
            with _autocast(device, self.mixed_precision):
                logits = self.model.module(crops)
            out = torch.softmax(logits.float(), dim=1) * weight_device
            if not on_device:
                staging = torch.empty(out.shape, dtype=out.dtype, pin_memory=pin)
                out = staging.copy_(out)
            for (z, y, x), p in zip(batch, out, strict=True):
                region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                probs[(slice(None), *region)] += p
                counts[region] += weight_home
        probs /= counts
        return probs


@dataclass
class Prediction:
    labels: sitk.Image  # uint8 on the scan's grid
    probabilities: np.ndarray | None  # (C, z, y, x) float32 on the scan's grid


def predict_image(
    model: LoadedModel,
    image: sitk.Image,
    overlap: float | None = None,
    weighting: str | None = None,
    batch_size: int | None = None,
    paper_stride: bool = False,
    largest_component: bool = False,
    return_probabilities: bool = False,
) -> Prediction:
    """Segment one scan; the label map comes back on the scan's own grid."""
    prep = model.preprocessing
    volume = preprocess_image(image, prep)
    probs = sliding_window_probabilities(model, volume, overlap, weighting, batch_size, paper_stride)
    probs = restore_probabilities(probs, image, prep)
    labels = probs.argmax(axis=0).astype(np.uint8)
    if largest_component:
        labels = largest_connected_component(labels)
    return Prediction(labels_to_image(labels, image), probs if return_probabilities else None)


def disagreement(probs_a: np.ndarray, probs_b: np.ndarray) -> tuple[np.ndarray, float]:
    """Voxel-wise disagreement and a per-scan score.

    The map is the total-variation distance between the two class distributions
    (0 = identical, 1 = certain of different classes). The score is its mean over the voxels
    that either model calls foreground, so a small structure is not diluted by background;
    0 when neither model finds anything.
    """
    voxel = 0.5 * np.abs(probs_a - probs_b).sum(axis=0)
    foreground = (probs_a.argmax(0) > 0) | (probs_b.argmax(0) > 0)
    score = float(voxel[foreground].mean()) if foreground.any() else 0.0
    return voxel.astype(np.float32), score


@dataclass
class PairPrediction:
    """Teacher and student maps with their disagreement; a teacher-only round (supervised only)
    gives the teacher's map alone (``student``, ``disagreement`` and ``score`` None)."""

    teacher: sitk.Image
    student: sitk.Image | None
    disagreement: sitk.Image | None
    score: float | None


class TeacherStudentPredictor:
    """Both networks of a round (or its teacher alone), loaded once and kept for repeated predictions."""

    def __init__(
        self, teacher_path: str | Path, student_path: str | Path | None, device: str = "auto"
    ) -> None:
        self.teacher = load_model(teacher_path, device)
        self.student = load_model(student_path, device) if student_path is not None else None

    @classmethod
    def from_models(cls, teacher: LoadedModel, student: LoadedModel | None) -> TeacherStudentPredictor:
        """A pair of networks already built (e.g. from a training checkpoint, not model files)."""
        pair = cls.__new__(cls)
        pair.teacher, pair.student = teacher, student
        return pair

    @property
    def teacher_only(self) -> bool:
        return self.student is None

    def predict(self, image: sitk.Image) -> PairPrediction:
        t = predict_image(self.teacher, image, return_probabilities=self.student is not None)
        if self.student is None:
            return PairPrediction(t.labels, None, None, None)
        s = predict_image(self.student, image, return_probabilities=True)
        voxel, score = disagreement(t.probabilities, s.probabilities)
        dis = sitk.GetImageFromArray(voxel)
        dis.CopyInformation(image)
        return PairPrediction(t.labels, s.labels, dis, score)
