"""Segment a scan with a model exported by `reciprocalseg export-onnx`, without reciprocalseg.

Needs only numpy, SimpleITK and onnxruntime:

    python examples/onnx_predict.py EXPORT_DIR/metadata.json student scan.nrrd scan_seg.nrrd
    python examples/onnx_predict.py EXPORT_DIR/metadata.json student t2.nii.gz adc.nii.gz seg.nii.gz

A model trained on several images per case takes one scan per channel, in the order of
metadata.json's "channels" (or one 4D file holding them), all on the first one's grid.

It follows EXPORT_DIR/metadata.json: resample to the model's spacing when it has one,
normalise each channel's intensities, pad a scan smaller than the patch, run Gaussian-weighted
overlapping windows through the network, merge their probabilities, undo the padding and
the resampling, and take the argmax. `reciprocalseg.inference.sliding_window` does the same (the tests
check that both give the same labels).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import SimpleITK as sitk


def normalise(volume: np.ndarray, intensity: dict) -> np.ndarray:
    volume = volume.astype(np.float32)
    if intensity["method"] == "ct_dataset":
        (lo, hi), (mean, std) = intensity["clip"], intensity["mean_std"]
        return ((np.clip(volume, lo, hi) - mean) / std).astype(np.float32)
    if intensity["method"] == "ct_window":
        lo, hi = intensity["window"]
        return ((np.clip(volume, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32)
    return ((volume - float(volume.mean())) / float(volume.std())).astype(np.float32)


def window_starts(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def gaussian(patch: list[int], sigma_scale: float = 0.125) -> np.ndarray:
    axes = []
    for n in patch:
        centre, sigma = (n - 1) / 2, n * sigma_scale
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2).astype(np.float32))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return np.maximum(w, w[w > 0].min()).astype(np.float32)


def sliding_window(
    session: ort.InferenceSession, volume: np.ndarray, meta: dict, batch: int = 4
) -> np.ndarray:
    """Class probabilities (K, z, y, x) of a normalised (C, z, y, x) volume (C channels)."""
    patch, steps = meta["patch_size_zyx"], meta["sliding_window"]["step_zyx"]
    spatial = volume.shape[1:]
    pads = [
        (max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(spatial, patch, strict=True)
    ]
    padded = np.pad(volume, [(0, 0), *pads])
    uniform = meta["sliding_window"]["weighting"] != "gaussian"
    weight = np.ones(patch, np.float32) if uniform else gaussian(patch)
    probs = np.zeros((meta["n_classes"], *padded.shape[1:]), np.float32)
    counts = np.zeros(padded.shape[1:], np.float32)
    corners = [
        (z, y, x)
        for z in window_starts(padded.shape[1], patch[0], steps[0])
        for y in window_starts(padded.shape[2], patch[1], steps[1])
        for x in window_starts(padded.shape[3], patch[2], steps[2])
    ]
    for i in range(0, len(corners), batch):
        chunk = corners[i : i + batch]
        crops = np.stack(
            [padded[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in chunk]
        )
        (out,) = session.run([meta["output"]["name"]], {meta["input"]["name"]: crops})
        for (z, y, x), p in zip(chunk, out, strict=True):
            probs[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]] += p * weight
            counts[z : z + patch[0], y : y + patch[1], x : x + patch[2]] += weight
    probs /= counts
    region = tuple(slice(before, before + n) for (before, _), n in zip(pads, spatial, strict=True))
    return probs[(slice(None), *region)]


def resampled_grid(image: sitk.Image, spacing: list[float]) -> sitk.Image:
    size = [
        max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return grid


def channels_of(images: list[sitk.Image]) -> list[sitk.Image]:
    """One 3D image per channel: the images as given, a 4D image's volumes, a vector image's components."""
    out = []
    for image in images:
        if image.GetDimension() == 4:
            size = list(image.GetSize())
            out += [sitk.Extract(image, [*size[:3], 0], [0, 0, 0, k]) for k in range(size[3])]
        elif image.GetNumberOfComponentsPerPixel() > 1:
            out += [
                sitk.VectorIndexSelectionCast(image, k) for k in range(image.GetNumberOfComponentsPerPixel())
            ]
        else:
            out.append(image)
    return out


def check_channels(channels: list[sitk.Image], specs: list[dict]) -> None:
    """As many channels as the model takes, all on the first one's grid."""
    names = ", ".join(s["name"] for s in specs)
    if len(channels) != len(specs):
        raise ValueError(
            f"the model takes {len(specs)} channel(s) ({names}), in that order; got {len(channels)}"
        )
    first = channels[0]
    for k, channel in enumerate(channels[1:], start=1):
        same = channel.GetSize() == first.GetSize() and all(
            np.allclose(a(), b(), atol=1e-3 * min(first.GetSpacing()))
            for a, b in ((channel.GetSpacing, first.GetSpacing), (channel.GetOrigin, first.GetOrigin))
        )
        if not same or not np.allclose(channel.GetDirection(), first.GetDirection(), atol=1e-3):
            raise ValueError(
                f"channel {k} ({specs[k]['name']}) is not on channel 0's grid: resample it first"
            )


def predict_probabilities(
    metadata_path: Path, model: str, image: sitk.Image | list[sitk.Image]
) -> np.ndarray:
    """Class probabilities (K, z, y, x) on the grid of ``image`` (one image, a 4D image, or a list
    of one image per channel: then the first one's grid) by the exported ``model``."""
    meta = json.loads(metadata_path.read_text())
    session = ort.InferenceSession(str(metadata_path.parent / meta["models"][model]))
    specs = meta.get("channels") or [{"name": "image", "intensity": meta["intensity"]}]
    channels = channels_of(image if isinstance(image, list) else [image])
    check_channels(channels, specs)
    image = channels[0]
    target = meta["spacing"]["target_mm_xyz"]
    resample = target is not None and any(
        abs(a - b) > 1e-3 for a, b in zip(image.GetSpacing(), target, strict=True)
    )
    grid = resampled_grid(image, target) if resample else None
    volumes = []
    for channel, spec in zip(channels, specs, strict=True):
        working = sitk.Cast(channel, sitk.sitkFloat32)
        working.CopyInformation(image)  # on the first channel's grid (checked above)
        if grid is not None:
            working = sitk.Resample(working, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        volumes.append(normalise(sitk.GetArrayFromImage(working), spec["intensity"]))
    probs = sliding_window(session, np.stack(volumes), meta)
    if not resample:
        return probs
    back = []
    for channel in probs:
        img = sitk.GetImageFromArray(channel)
        img.CopyInformation(grid)
        back.append(sitk.GetArrayFromImage(sitk.Resample(img, image, sitk.Transform(), sitk.sitkLinear)))
    return np.stack(back)


def to_label_image(probs: np.ndarray, image: sitk.Image | list[sitk.Image]) -> sitk.Image:
    """The argmax label map, with the geometry of ``image`` (of the first channel's)."""
    labels = sitk.GetImageFromArray(probs.argmax(axis=0).astype(np.uint8))
    reference = channels_of(image if isinstance(image, list) else [image])[0]
    labels.CopyInformation(reference)
    return labels


USAGE = (
    "usage: python examples/onnx_predict.py EXPORT_DIR/metadata.json MODEL scan.nrrd [scan2 ...] seg.nrrd\n"
    "       (one scan per channel, in metadata.json's channel order, or one 4D file)"
)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(USAGE, file=sys.stderr)
        return 2
    metadata, model, *scans, out = argv
    models = json.loads(Path(metadata).read_text())["models"]
    if model not in models:
        print(f"error: {metadata} has no model {model!r}; choose one of {', '.join(models)}", file=sys.stderr)
        return 2
    images = [sitk.ReadImage(scan) for scan in scans]
    try:
        probs = predict_probabilities(Path(metadata), model, images)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sitk.WriteImage(to_label_image(probs, images), out, True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
