"""A two-channel phantom cohort whose target is visible only in the combination of its channels.

Each case holds three kinds of blob of the same size and shape distribution inside a textured body:
the *target* (labelled 1), bright in both channels; *decoy A*, bright in channel 0 only; *decoy B*,
bright in channel 1 only. Each channel alone shows the target and one decoy as look-alikes (same
brightness, size, shape and texture statistics, at random places), so a network that sees one
channel cannot tell which of them is the target; a network that sees both can (bright in both).
Each channel has its own smooth bias field and noise, as two MRI sequences would.

This is the proof cohort of issue 24: a two-channel model must segment it well and a single-channel
model must not (tests/training/test_multichannel_proof.py). Everything is drawn from
``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .io import Case, write_image
from .phantom import _dilate, _Grid, phantom_case_seed

__all__ = ["CHANNEL_NAMES", "make_channel_phantom", "write_channel_phantom_cohort"]

CHANNEL_NAMES = ("T2", "ADC")
_BLOB_KINDS = ("target", "decoy_a", "decoy_b")


def _place_blobs(rng: np.random.Generator, grid: _Grid, body: np.ndarray) -> dict[str, np.ndarray]:
    """One mask per blob kind, none touching another (retried until all fit)."""
    length = float(grid.extent.min())
    for _ in range(100):
        masks: dict[str, np.ndarray] = {}
        taken = np.zeros(grid.shape, dtype=bool)
        for kind in _BLOB_KINDS:
            axes = length * rng.uniform(0.1, 0.16, size=3)
            half = np.maximum(grid.extent / 2 - 1.2 * axes.max() - 2 * grid.voxel, 0.0)
            mask = grid.ellipsoid(
                rng.uniform(-half, half), axes, Rotation.random(random_state=rng).as_matrix()
            )
            mask &= body
            if mask.sum() < 30 or (mask & _dilate(taken, 3)).any():
                break
            masks[kind] = mask
            taken |= mask
        if len(masks) == len(_BLOB_KINDS):
            return masks
    raise ValueError(
        f"could not place three separate blobs in a volume of shape {grid.shape}; use a larger one"
    )


def _channel(
    rng: np.random.Generator, grid: _Grid, body: np.ndarray, bright: Sequence[np.ndarray]
) -> np.ndarray:
    """One channel: textured tissue in the body, the `bright` blobs at one random brightness with
    their own texture, then blur, a smooth multiplicative bias and noise."""
    tissue = rng.uniform(60, 80) + rng.uniform(8, 14) * grid.wave_field(rng, 8, (8.0, 24.0))
    clean = np.where(body, tissue, np.float32(8.0)).astype(np.float32)
    level = float(rng.uniform(120, 150))
    texture = 6.0 * grid.wave_field(rng, 6, (6.0, 16.0))
    for mask in bright:
        clean[mask] = level + texture[mask]
    clean = ndimage.gaussian_filter(clean, sigma=0.6)
    extent = grid.extent.max()
    bias = np.exp(0.2 * np.clip(grid.wave_field(rng, 3, (1.5 * extent, 3.0 * extent)), -1.5, 1.5))
    noisy = clean * bias + rng.normal(0.0, rng.uniform(5.0, 8.0), size=grid.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 255.0).astype(np.float32)


def make_channel_phantom(
    seed: int, shape_zyx: Sequence[int] = (32, 40, 40), spacing_xyz: Sequence[float] = (1.0, 1.0, 1.5)
) -> tuple[list[sitk.Image], sitk.Image]:
    """One case: ([channel 0, channel 1] float32 images, uint8 label), all on one grid."""
    rng = np.random.default_rng(seed)
    grid = _Grid(shape_zyx, spacing_xyz)
    bx, by = grid.extent[0] / 2 * rng.uniform(0.95, 1.1), grid.extent[1] / 2 * rng.uniform(0.9, 1.05)
    body = np.broadcast_to((grid.x / bx) ** 2 + (grid.y / by) ** 2 <= 1.0, grid.shape)
    blobs = _place_blobs(rng, grid, body)
    arrays = [
        _channel(rng, grid, body, [blobs["target"], blobs["decoy_a"]]),
        _channel(rng, grid, body, [blobs["target"], blobs["decoy_b"]]),
    ]
    label = blobs["target"].astype(np.uint8)
    origin = tuple(float(v) for v in np.round(rng.uniform(-150.0, 50.0, size=3), 3))
    images = [sitk.GetImageFromArray(a) for a in arrays]
    lab = sitk.GetImageFromArray(label)
    for img in (*images, lab):
        img.SetSpacing(tuple(float(s) for s in spacing_xyz))
        img.SetOrigin(origin)
    return images, lab


def write_channel_phantom_cohort(
    out_dir: str | os.PathLike[str],
    n_cases: int,
    seed: int = 0,
    shape_zyx: Sequence[int] = (32, 40, 40),
    layout: str = "nnunet",
    prefix: str = "chan",
) -> list[Case]:
    """Write `n_cases` two-channel phantoms and return them as cases (IDs ``<prefix>_000`` ...).

    ``layout="nnunet"``: ``imagesTr/<ID>_0000.nii.gz``, ``imagesTr/<ID>_0001.nii.gz`` and
    ``labelsTr/<ID>.nii.gz``; ``layout="4d"``: ``imagesTr/<ID>.nii.gz`` (a 4D NIfTI, channel last)
    and the same labels."""
    if layout not in ("nnunet", "4d"):
        raise ValueError(f"layout must be 'nnunet' or '4d', got {layout!r}")
    out = Path(out_dir)
    cases = []
    for i in range(n_cases):
        cid = f"{prefix}_{i:03d}"
        channels, label = make_channel_phantom(phantom_case_seed(seed, i), shape_zyx)
        label_path = out / "labelsTr" / f"{cid}.nii.gz"
        write_image(label, label_path)
        if layout == "nnunet":
            paths = [out / "imagesTr" / f"{cid}_{k:04d}.nii.gz" for k in range(len(channels))]
            for channel, path in zip(channels, paths, strict=True):
                write_image(channel, path)
            cases.append(Case.of_channels(cid, paths, label_path))
        else:
            path = out / "imagesTr" / f"{cid}.nii.gz"
            write_image(sitk.JoinSeries(channels), path)
            cases.append(Case(cid, path, label_path))
    return cases
