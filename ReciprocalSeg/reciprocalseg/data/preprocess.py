"""Preprocessing and its exact inverse.

Forward: optional resampling to a target spacing (SimpleITK: linear for images, nearest
for labels), then intensity normalisation (per-volume z-score by default, or a CT window
scaled to [-1, 1], or for CT the dataset's percentile clip then the dataset's z-score,
planned from the data by planning/planner.py). Padding to the patch size happens at crop / window time.
Inverse: predictions made on the preprocessed grid go back onto the scan's own grid
(identity when no resampling was done, so labels come back voxel for voxel).

Several channels (issue 24): `Preprocessing.channels` holds one normalisation per channel (a CT
channel the CT one, an MRI channel the per-scan z-score), the scan is a vector image (data/channels.py)
and the array is (C, z, y, x); each channel is resampled and normalised on its own. Without
`channels` a scan is one channel and its array (z, y, x), exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED

# The most voxels a scan may have on the working grid (2 GiB as float32). Checked before resampling:
# a target spacing far finer than a scan's own (an edited plan, or one coarse scan among fine ones)
# would otherwise have SimpleITK allocate terabytes, a traceback or an out-of-memory kill.
MAX_WORKING_VOXELS = 1 << 29


@dataclass(frozen=True)
class Preprocessing:
    intensity: str = "zscore"
    ct_window: tuple[float, float] = (-125.0, 275.0)
    target_spacing: tuple[float, float, float] | None = None
    intensity_clip: tuple[float, float] | None = None  # "ct_dataset": dataset percentiles
    intensity_mean_std: tuple[float, float] | None = None  # "ct_dataset": dataset statistics
    # Several channels: each one's normalisation (its intensity fields; target_spacing is ours).
    channels: tuple[Preprocessing, ...] = ()
    # Channels off channel 0's grid are resampled onto it with this interpolation (None: refused).
    channel_resampling: str | None = None

    @classmethod
    def from_config(cls, config: object) -> Preprocessing:
        return cls(
            intensity=getattr(config, "intensity", "zscore"),
            ct_window=tuple(getattr(config, "ct_window", (-125.0, 275.0))),
            target_spacing=_tuple_or_none(getattr(config, "target_spacing", None)),
            intensity_clip=_tuple_or_none(getattr(config, "intensity_clip", None)),
            intensity_mean_std=_tuple_or_none(getattr(config, "intensity_mean_std", None)),
            channels=tuple(_channel_from_dict(c) for c in getattr(config, "channels", ()) or ()),
            channel_resampling=getattr(config, "channel_resampling", None),
        )

    @property
    def in_channels(self) -> int:
        """The channels a scan must have (one without per-channel settings)."""
        return max(1, len(self.channels))

    def to_dict(self) -> dict:
        out = {
            "intensity": self.intensity,
            "ct_window": list(self.ct_window),
            "target_spacing": self.target_spacing,
        }
        if self.intensity == "ct_dataset":  # other modes keep the keys (and cache keys) they had
            out["intensity_clip"] = list(self.intensity_clip or ())
            out["intensity_mean_std"] = list(self.intensity_mean_std or ())
        if self.channels:  # only then: single-channel dicts (and cache keys) stay as they were
            out["channels"] = [_channel_dict(c) for c in self.channels]
            out["channel_resampling"] = self.channel_resampling
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            data["intensity"],
            tuple(data["ct_window"]),
            _tuple_or_none(data.get("target_spacing")),
            _tuple_or_none(data.get("intensity_clip")),
            _tuple_or_none(data.get("intensity_mean_std")),
            tuple(_channel_from_dict(c) for c in data.get("channels") or ()),
            data.get("channel_resampling"),
        )


def _channel_dict(prep: Preprocessing) -> dict:
    out = {k: v for k, v in prep.to_dict().items() if k != "target_spacing"}
    return out


def _channel_from_dict(data: dict) -> Preprocessing:
    """One channel's normalisation from its dict (a config's `channels` entry or a model file's)."""
    return Preprocessing(
        intensity=data.get("intensity", "zscore"),
        ct_window=tuple(data.get("ct_window") or (-125.0, 275.0)),
        intensity_clip=_tuple_or_none(data.get("intensity_clip")),
        intensity_mean_std=_tuple_or_none(data.get("intensity_mean_std")),
    )


def _tuple_or_none(value: object) -> tuple | None:
    return tuple(value) if value else None  # type: ignore[arg-type]


def normalize_intensity(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Per-volume z-score (the paper's normalisation), a CT window scaled to [-1, 1], or the
    dataset's CT clip and z-score."""
    array = array.astype(np.float32, copy=False)
    if prep.intensity == "ct_dataset":
        if prep.intensity_clip is None or prep.intensity_mean_std is None:
            raise DataError("intensity 'ct_dataset' needs the dataset's clip and mean/std (plan them)")
        (lo, hi), (mean, std) = prep.intensity_clip, prep.intensity_mean_std
        return ((np.clip(array, lo, hi) - mean) / std).astype(np.float32)
    if prep.intensity == "ct":
        lo, hi = prep.ct_window
        return ((np.clip(array, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32)
    peak = max(float(array.max()), -float(array.min()))
    if peak > 1e12:  # float32 sums of squares would overflow to inf (NaN voxels): the z-score does not
        array = array / np.float32(peak)  # depend on the scale, so bring huge values to [-1, 1] first
    std = float(array.std())
    if std == 0:
        raise DataError("image has constant intensity: nothing to segment (check the file)")
    return ((array - float(array.mean())) / std).astype(np.float32)


def _mm(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _resampled_grid(image: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    """An empty image covering the same physical extent at `spacing`."""
    size = [
        max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    if math.prod(size) > MAX_WORKING_VOXELS:
        raise DataError(
            f"a scan of size {tuple(image.GetSize())} at spacing {_mm(image.GetSpacing())} mm would have "
            f"{math.prod(size):.3g} voxels on the working grid at the target spacing {_mm(spacing)} mm "
            f"(at most {MAX_WORKING_VOXELS:,}): choose a coarser target spacing (--target-spacing, the "
            "plan's target_spacing) or leave out the scans much coarser than the others"
        )
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return grid


def needs_resampling(image: sitk.Image, prep: Preprocessing, tol: float = 1e-3) -> bool:
    if prep.target_spacing is None:
        return False
    return any(abs(a - b) > tol for a, b in zip(image.GetSpacing(), prep.target_spacing, strict=True))


def to_working_grid(image: sitk.Image, prep: Preprocessing, is_label: bool = False) -> sitk.Image:
    """Resample onto the training grid (no-op without a target spacing)."""
    if not needs_resampling(image, prep):
        return image
    grid = _resampled_grid(image, prep.target_spacing)
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(image, grid, sitk.Transform(), interp, 0.0, image.GetPixelID())


def preprocess_image(image: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """Image -> float32 array on the working grid, normalised: (z, y, x) for a single-channel
    setting, (C, z, y, x) with per-channel settings (`prep.channels`; `image` a vector image)."""
    found = image.GetNumberOfComponentsPerPixel()
    if found != prep.in_channels:
        raise DataError(
            f"the scan has {found} channel(s) but the model takes {prep.in_channels}: give every case "
            "the channels the model was trained on, in the same order"
        )
    if not prep.channels:
        working = to_working_grid(sitk.Cast(image, sitk.sitkFloat32), prep)
        return normalize_intensity(sitk.GetArrayFromImage(working), prep)
    arrays = []
    for k, channel_prep in enumerate(prep.channels):
        channel = sitk.VectorIndexSelectionCast(image, k, sitk.sitkFloat32) if found > 1 else image
        working = to_working_grid(sitk.Cast(channel, sitk.sitkFloat32), prep)
        try:
            arrays.append(normalize_intensity(sitk.GetArrayFromImage(working), channel_prep))
        except DataError as exc:
            raise DataError(f"channel {k}: {exc}") from None
    return np.stack(arrays)


def preprocess_label(label: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """Label map -> uint8 (z, y, x) array on the working grid (nearest neighbour; a partial label,
    with voxels 255 = unannotated, by `partial_to_working_grid`)."""
    if needs_resampling(label, prep) and np.any(sitk.GetArrayViewFromImage(label) == UNANNOTATED):
        return partial_to_working_grid(label, prep)
    return sitk.GetArrayFromImage(to_working_grid(label, prep, is_label=True)).astype(np.uint8)


def partial_to_working_grid(label: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """A partial label on the working grid, uint8 (z, y, x), its annotation kept.

    Nearest neighbour, as for a full label, wherever it lands on an annotated voxel. It alone would
    drop thin annotations: going from 0.625 to 1.25 mm it samples every other slice, so a stroke on
    the others vanishes. Where it lands on 255, a working voxel takes the annotated value with the
    largest share of its footprint (a box as wide as the spacing ratio, then linear interpolation;
    a class wins a tie with the background); 255 only where nothing annotated reaches it (or it
    lies outside the scan). So a stroke on a dropped slice lands on the working slices next to it.
    """
    if prep.target_spacing is None:
        return sitk.GetArrayFromImage(label).astype(np.uint8)
    grid = _resampled_grid(label, prep.target_spacing)
    nearest = sitk.GetArrayFromImage(
        sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, float(UNANNOTATED))
    ).astype(np.uint8)
    missing = nearest == UNANNOTATED
    if not missing.any():
        return nearest
    ratios = [t / s for s, t in zip(label.GetSpacing(), prep.target_spacing, strict=True)]
    radius = [max(0, math.ceil((r - 1) / 2 - 1e-6)) for r in ratios]
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)) if v != UNANNOTATED]
    fill = np.full(nearest.shape, UNANNOTATED, np.uint8)
    best = np.zeros(nearest.shape, np.float32)
    for value in values:  # ascending: on a tie the class wins over the background
        indicator = sitk.Cast(label == value, sitk.sitkFloat32)
        if any(radius):
            indicator = sitk.BoxMean(indicator, radius)
        share = sitk.GetArrayFromImage(
            sitk.Resample(indicator, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        wins = (share > 0) & (share >= best)
        fill[wins], best[wins] = value, share[wins]
    nearest[missing] = fill[missing]
    return nearest


def restore_probabilities(probs: np.ndarray, original: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """(C, z, y, x) class probabilities on the working grid -> on the scan's own grid."""
    if not needs_resampling(original, prep):
        return probs
    working = _resampled_grid(original, prep.target_spacing)
    out = []
    for channel in probs:
        img = sitk.GetImageFromArray(channel.astype(np.float32))
        img.CopyInformation(working)
        back = sitk.Resample(img, original, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(back))
    return np.stack(out)


def labels_to_image(labels: np.ndarray, original: sitk.Image) -> sitk.Image:
    """A (z, y, x) label array on the scan's grid -> uint8 image carrying the scan's geometry."""
    if labels.shape != original.GetSize()[::-1]:
        raise DataError(
            f"label array shape {labels.shape} does not match the scan {original.GetSize()[::-1]}"
        )
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.CopyInformation(original)
    return img


def pad_to_at_least(
    array: np.ndarray, shape: tuple[int, ...], value: float = 0.0
) -> tuple[np.ndarray, tuple]:
    """Pad the last len(shape) axes symmetrically up to `shape`; returns the slices that undo it."""
    lead = array.ndim - len(shape)
    pads = [(0, 0)] * lead
    undo = [slice(None)] * lead
    for n, target in zip(array.shape[lead:], shape, strict=True):
        extra = max(target - n, 0)
        pads.append((extra // 2, extra - extra // 2))
        undo.append(slice(extra // 2, extra // 2 + n))
    if not any(p for pair in pads for p in pair):
        return array, tuple(undo)
    return np.pad(array, pads, mode="constant", constant_values=value), tuple(undo)
