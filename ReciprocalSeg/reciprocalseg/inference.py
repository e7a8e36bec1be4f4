"""Sliding-window prediction on whole scans, and teacher-student disagreement.

Windows are cut from the scan held on the compute device, run through the network in
batches (bf16 autocast on CUDA), weighted (Gaussian by default, so window borders count
less) and accumulated. `paper_stride=True` reproduces the published evaluation instead:
stride (x, y, z) = (18, 18, 4), uniform weights, one window at a time, fp32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .data.preprocess import (
    Preprocessing,
    labels_to_image,
    pad_to_at_least,
    preprocess_image,
    restore_probabilities,
)
from .model.vnet import build_model
from .postprocess import largest_connected_component
from .training.checkpoint import load_model_file
from .training.runner import resolve_device

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
    """Load `teacher.pt`, `student.pt` or `supervised.pt` (any ReciprocalSeg model file)."""
    data = load_model_file(Path(path))
    meta = data["meta"]
    dev = resolve_device(device)
    module = build_model(meta["n_classes"], meta["n_filters"], meta["normalization"], meta["dropout"])
    module.load_state_dict(data["state_dict"])
    module.to(dev).eval()
    return LoadedModel(module, meta, dev, Path(path))


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
) -> np.ndarray:
    """Class probabilities (C, z, y, x) for a preprocessed (z, y, x) volume."""
    meta = model.meta
    overlap = meta.get("inference_overlap", 0.5) if overlap is None else overlap
    weighting = meta.get("inference_weighting", "gaussian") if weighting is None else weighting
    batch_size = meta.get("inference_batch", 4) if batch_size is None else batch_size
    patch = model.patch_zyx
    if paper_stride:
        x, y, z = PAPER_STRIDE_XYZ
        steps, weighting, batch_size, mixed_precision = (z, y, x), "uniform", 1, False
    else:
        steps = tuple(max(1, round(p * (1 - overlap))) for p in patch)

    padded, undo = pad_to_at_least(volume.astype(np.float32, copy=False), patch)
    device = model.device
    image = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    shape = image.shape
    weight = (gaussian_weights(patch) if weighting == "gaussian" else torch.ones(patch)).to(device)
    probs = torch.zeros((model.n_classes, *shape), dtype=torch.float32, device=device)
    counts = torch.zeros(shape, dtype=torch.float32, device=device)

    corners = [
        (z0, y0, x0)
        for z0 in window_starts(shape[0], patch[0], steps[0])
        for y0 in window_starts(shape[1], patch[1], steps[1])
        for x0 in window_starts(shape[2], patch[2], steps[2])
    ]
    model.module.eval()
    for i in range(0, len(corners), batch_size):
        batch_corners = corners[i : i + batch_size]
        crops = torch.stack(
            [image[z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in batch_corners]
        )[:, None]
        with _autocast(device, mixed_precision):
            logits = model.module(crops)
        out = torch.softmax(logits.float(), dim=1)
        for (z, y, x), p in zip(batch_corners, out, strict=True):
            region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            probs[(slice(None), *region)] += p * weight
            counts[region] += weight
    probs /= counts
    return probs[(slice(None), *undo)].cpu().numpy()


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
    teacher: sitk.Image
    student: sitk.Image
    disagreement: sitk.Image
    score: float


class TeacherStudentPredictor:
    """Both networks of a round, loaded once and kept for repeated predictions."""

    def __init__(self, teacher_path: str | Path, student_path: str | Path, device: str = "auto") -> None:
        self.teacher = load_model(teacher_path, device)
        self.student = load_model(student_path, device)

    def predict(self, image: sitk.Image) -> PairPrediction:
        t = predict_image(self.teacher, image, return_probabilities=True)
        s = predict_image(self.student, image, return_probabilities=True)
        voxel, score = disagreement(t.probabilities, s.probabilities)
        dis = sitk.GetImageFromArray(voxel)
        dis.CopyInformation(image)
        return PairPrediction(t.labels, s.labels, dis, score)
