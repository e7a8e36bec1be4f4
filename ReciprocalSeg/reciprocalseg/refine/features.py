"""The case's sliding windows with the network's features cached, so that a refine runs the frozen
body of the network once and the adapted tail as often as it likes.

The windows are those of inference (`inference/sliding_window.py`: the same padding, starts,
overlap and Gaussian weights), and `probabilities` blends the tail's softmax exactly as inference
blends the whole network's: with the tail unchanged it gives inference's probabilities.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..common.errors import DataError
from ..data.preprocess import pad_to_at_least
from ..inference.sliding_window import LoadedModel, gaussian_weights, window_starts

# Host or device memory the cached features of one case may take. A left-atrium scan on the CPU
# plan needs about 100 MiB; a whole-body CT at a fine spacing could need more than a machine has.
MAX_FEATURE_BYTES = 6 << 30


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA GPUs that have it, as training and inference use; fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class WindowFeatures:
    """Per window: its corner on the padded volume and the features of the network's body."""

    corners: list[tuple[int, int, int]]
    features: torch.Tensor  # (windows, n_filters, pz, py, px) on the model's device
    patch: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    undo: tuple[slice, ...]  # the slices of the padded volume that are the volume
    weighting: str = "gaussian"  # how windows blend (the model's `inference_weighting`)

    @classmethod
    def compute(cls, model: LoadedModel, volume: np.ndarray) -> WindowFeatures:
        """`volume`: the preprocessed scan, (z, y, x), or (C, z, y, x) for a model of C channels."""
        patch = model.patch_zyx
        overlap = model.meta.get("inference_overlap", 0.5)
        steps = tuple(max(1, round(p * (1 - overlap))) for p in patch)
        padded, undo = pad_to_at_least(volume.astype(np.float32, copy=False), patch)
        spatial, undo = padded.shape[-3:], undo[-3:]  # the channels, if any, lead
        corners = [
            (z, y, x)
            for z in window_starts(spatial[0], patch[0], steps[0])
            for y in window_starts(spatial[1], patch[1], steps[1])
            for x in window_starts(spatial[2], patch[2], steps[2])
        ]
        channels = model.module.head.in_channels
        dtype = (
            torch.bfloat16
            if model.device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float32
        )
        size = len(corners) * channels * math.prod(patch) * (2 if dtype == torch.bfloat16 else 4)
        if size > MAX_FEATURE_BYTES:
            raise DataError(
                f"refining this case would cache {size / 2**30:.1f} GiB of features (at most "
                f"{MAX_FEATURE_BYTES / 2**30:.0f} GiB): the scan is too large to refine; crop it"
            )
        image = torch.from_numpy(np.ascontiguousarray(padded))
        features = torch.empty((len(corners), channels, *patch), dtype=dtype, device=model.device)
        batch = model.meta.get("inference_batch", 4)
        model.module.eval()
        with torch.inference_mode(), autocast(model.device):
            for i in range(0, len(corners), batch):
                crops = torch.stack([_window(image, c, patch) for c in corners[i : i + batch]])
                crops = crops[:, None] if crops.dim() == 4 else crops  # one channel: add its axis
                crops = crops.to(model.device).contiguous(memory_format=torch.channels_last_3d)
                features[i : i + len(crops)] = model.module.features(crops)
        weighting = model.meta.get("inference_weighting", "gaussian")
        return cls(corners, features, patch, tuple(spatial), undo, weighting)

    def probabilities(self, tail: Callable[[torch.Tensor], torch.Tensor], batch: int) -> np.ndarray:
        """(C, z, y, x) class probabilities of the volume: `tail` on every window's features, the
        softmax weighted and blended as inference blends windows."""
        device = self.features.device
        weight = gaussian_weights(self.patch) if self.weighting == "gaussian" else torch.ones(self.patch)
        weight = weight.to(device)
        probs = counts = None
        with torch.inference_mode(), autocast(device):
            for i in range(0, len(self.corners), batch):
                out = torch.softmax(tail(self.features[i : i + batch]).float(), dim=1) * weight
                if probs is None:
                    probs = torch.zeros((out.shape[1], *self.padded_shape), device=device)
                    counts = torch.zeros(self.padded_shape, device=device)
                for (z, y, x), p in zip(self.corners[i : i + batch], out, strict=True):
                    region = (
                        slice(z, z + self.patch[0]),
                        slice(y, y + self.patch[1]),
                        slice(x, x + self.patch[2]),
                    )
                    probs[(slice(None), *region)] += p
                    counts[region] += weight
            probs /= counts
            return probs[(slice(None), *self.undo)].cpu().numpy()


def _window(array: torch.Tensor, corner: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    z, y, x = corner
    return array[..., z : z + patch[0], y : y + patch[1], x : x + patch[2]]


class LastValue:
    """One cached value and its key: a person refines the same case again and again (the strokes
    accumulate), so the last case's features (and the replay crops') are kept for the next refine.
    Thread-safe; `clear()` frees the memory (on a GPU, the features stay on it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: object = None
        self._value: object = None
        self.hits = 0

    def get(self, key: object) -> object | None:
        with self._lock:
            if self._value is not None and self._key == key:
                self.hits += 1
                return self._value
            return None

    def put(self, key: object, value: object) -> None:
        with self._lock:
            self._key, self._value = key, value

    def clear(self) -> None:
        self.put(None, None)


def model_key(path: Path, device: torch.device) -> tuple:
    """What identifies a model file's weights here: its path, size and modification time."""
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, str(device))


def image_key(image: sitk.Image) -> tuple:
    """What identifies a scan: its grid and a digest of its voxels."""
    digest = hashlib.sha1(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes()).hexdigest()
    return (
        image.GetSize(),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
        image.GetPixelIDValue(),
        digest,
    )
